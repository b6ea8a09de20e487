// `understudy dump`: checkpoint a running process tree into an image
// directory, CRIU-style. One full checkpoint by default; with --incremental
// the engine stays attached and writes delta epochs (dirty tracking needs a
// live engine between epochs; an engine that dies is replaced and the new one
// continues the chain, its next epoch full, unless --no-restart-engine). Like
// CRIU, the app is killed after a successful dump unless --leave-running.
import type { CheckpointResult } from '../../native/engine.js';
import { intFlag, missingFlag, PID_MAX, stringFlag, type Command } from '../command.js';

function line(r: CheckpointResult): string {
  return (
    `epoch ${r.epoch} (${r.full ? 'full' : 'delta'}): ${r.pages} pages, pause ${(r.pauseNs / 1e6).toFixed(2)} ms ` +
    `(barrier ${(r.barrierNs / 1e6).toFixed(2)}, copy ${(r.copyNs / 1e6).toFixed(2)}), written in ${(r.writeNs / 1e6).toFixed(1)} ms -> ${r.epochDir}`
  );
}

export const dumpCommand: Command = {
  name: 'dump',
  summary: 'checkpoint a running process tree into an image directory (like criu dump)',
  usage: '--pid PID -D DIR [--leave-running] [--incremental [--epochs N] [--interval-ms M] [--no-restart-engine]] [--json]',
  help:
    '  --pid PID          the root process of the app (its children are included)\n' +
    '  -D, --dir DIR      image directory (created; must not hold an image yet)\n' +
    '  --leave-running    keep the app running after the dump (default, as in CRIU: kill it)\n' +
    '  --incremental      stay attached and write a delta epoch every --interval-ms, with exact\n' +
    '                     dirty-page tracking; stops after --epochs deltas or on SIGINT/SIGTERM\n' +
    '  --epochs N         number of delta epochs after epoch 0 (implies --incremental)\n' +
    '  --interval-ms M    time between epochs (default 1000)\n' +
    '  --no-restart-engine  with --incremental: fail when the checkpoint engine dies (default: a new\n' +
    '                     engine continues the chain with a full epoch; 3 restarts in a row at most)\n' +
    '  --no-children      only the given process, not its descendants',
  options: {
    pid: { type: 'string' },
    dir: { type: 'string', short: 'D' },
    'leave-running': { type: 'boolean' },
    incremental: { type: 'boolean' },
    epochs: { type: 'string' },
    'interval-ms': { type: 'string' },
    'no-children': { type: 'boolean' },
    'no-restart-engine': { type: 'boolean' },
  },
  needsRoot: true,
  async run(ctx, values) {
    const pid = intFlag(values, 'pid', 1, PID_MAX) ?? missingFlag('--pid');
    const dir = stringFlag(values, 'dir', '-D/--dir');
    const epochs = intFlag(values, 'epochs', 0, 1_000_000);
    const intervalMs = intFlag(values, 'interval-ms', 1, 3_600_000) ?? 1000;
    const incremental = values.incremental === true || epochs !== undefined;
    const leaveRunning = values['leave-running'] === true;

    // the protect loop without a graph: epoch 0, then (incremental) a delta every interval
    const { ProtectLoop } = await import('../../agent/protect.js');
    const loop = new ProtectLoop({
      pid,
      imageDir: dir,
      includeChildren: values['no-children'] !== true,
      incremental,
      graph: 'none',
      schedule: incremental ? { intervalMs, maxDeltas: epochs } : { maxDeltas: 0 },
      restartEngine: incremental && values['no-restart-engine'] !== true,
    });
    loop.on('restarted', (r) => {
      if (!ctx.json) ctx.out(`the checkpoint engine died (${r.error.code}); engine ${r.enginePid} continues the chain at epoch ${r.nextEpoch} (full)`);
    });
    const results: CheckpointResult[] = [];
    loop.on('epoch', (e) => {
      results.push(e.result);
      if (!ctx.json) ctx.out(line(e.result));
    });
    let interrupted: () => void = () => {};
    const signalled = new Promise<void>((res) => (interrupted = res));
    const onSignal = (): void => interrupted();
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    try {
      await loop.start();
      await Promise.race([loop.scheduleDone, signalled]);
      // a failure released the app (it keeps running): stop() throws it
      await loop.stop({ app: leaveRunning ? 'leave' : 'kill' });
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    if (ctx.json) ctx.out(JSON.stringify({ dir, pid, leftRunning: leaveRunning, epochs: results }, null, 2));
    else ctx.out(leaveRunning ? `app ${pid} left running` : `app ${pid} killed after the dump (use --leave-running to keep it)`);
    return 0;
  },
};
