import { UnderstudyError } from '../../util/errors.js';
import { intFlag, PID_MAX, type Command } from '../command.js';

export const traceCommand: Command = {
  name: 'trace',
  summary: "show the app's events as they happen (processes, fds, memory, file writes, IPC, TCP)",
  usage: '[--json] -- CMD [ARGS...]\n       understudy trace [--json] --pid PID',
  help:
    '  -- CMD ARGS       run CMD traced from its first instruction; stops when it exits\n' +
    '  --pid PID         trace a running process and its descendants; stops when it exits\n' +
    "  --app-id ID       the app's name in log lines (default trace-<pid>-1)\n" +
    'Ctrl-C or SIGTERM stops tracing; with --pid the process is left running.',
  options: {
    pid: { type: 'string' },
    'app-id': { type: 'string' },
  },
  positionals: true,
  needsRoot: true,
  async run(ctx, values, positionals) {
    const { eventJson, eventLine } = await import('../../trace/format.js');
    const { TraceSession } = await import('../../trace/session.js');
    const pidArg = values.pid;
    if (pidArg === undefined && positionals.length === 0) {
      throw new UnderstudyError('E_USAGE', 'give a command after `--` or --pid PID');
    }
    if (pidArg !== undefined && positionals.length > 0) {
      throw new UnderstudyError('E_USAGE', 'give either a command or --pid PID, not both');
    }
    const pid = intFlag(values, 'pid', 1, PID_MAX);
    let signalled = false;
    let stopNow: () => void = () => {};
    const stopped = new Promise<void>((res) => (stopNow = res));
    // `understudy trace … | head`: a closed stdout stops tracing instead of crashing
    let outClosed = false;
    const onOutError = (): void => {
      outClosed = true;
      stopNow();
    };
    process.stdout.on('error', onOutError);
    const print = (line: string): void => {
      if (!outClosed) ctx.out(line);
    };
    const session = await TraceSession.start({
      appId: typeof values['app-id'] === 'string' ? values['app-id'] : undefined,
      command: pid === undefined ? positionals : undefined,
      pid,
      stdio: 'inherit',
      changeLog: false, // it prints events and never asks for a dirty set: memory stays flat however long it runs
      onEvent: (ev) => {
        if (ev.type === 'stats') return;
        print(ctx.json ? JSON.stringify(eventJson(ev)) : eventLine(ev));
      },
    });
    const onSignal = (): void => {
      signalled = true;
      stopNow();
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    // --pid: the root's exit event says it is gone; a 500 ms check covers a root that was a zombie already.
    const poll = setInterval(() => session.reconcileRootOnly(), 500);
    // the tracer ending by itself ends the trace: nothing more can be shown
    const lost = session.tracer.lost.then((status) => status);
    const tracerGone = await Promise.race([session.rootExited.then(() => undefined), stopped.then(() => undefined), lost]);
    clearInterval(poll);
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    process.stdout.removeListener('error', onOutError);
    if (tracerGone !== undefined) {
      // the session's timers go; the dead tracer's stop fails at once, which is known
      await session.stop().catch(() => undefined);
      const app = session.rootPid > 0 ? String(session.rootPid) : undefined;
      throw new UnderstudyError(
        'E_TRACER',
        `the eBPF tracer ${tracerGone} after ${session.events} events: the app is no longer traced and keeps running` +
          `${app ? ` (pid ${app})` : ''}. Run \`understudy check\`, then trace it again with \`understudy trace --pid PID\`.`,
      );
    }
    // let the last records arrive (the helper drains on stop)
    const stats = await session.stop();
    const summary = {
      type: 'summary',
      events: session.events,
      lost: stats.lost,
      childrenNotFiltered: stats.filterFailures,
      writeFaultsNotCounted: stats.faultMapFailures,
      refusedRecords: stats.refused,
      stoppedBy: signalled ? 'signal' : 'exit',
    };
    if (ctx.json) print(JSON.stringify(summary));
    else {
      const refused = Object.values(stats.refused).reduce((a, b) => a + b, 0);
      const faults = stats.faultMapFailures ? `, ${stats.faultMapFailures} write faults not counted (the kernel's write-fault map was full)` : '';
      print(`trace: ${session.events} events, ${stats.lost} lost in the ring buffer, ${refused} records refused${faults}`);
    }
    if (session.held && !signalled) return await session.held.exited;
    return 0;
  },
};
