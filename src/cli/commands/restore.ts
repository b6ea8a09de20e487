// `understudy restore`: bring a checkpointed app back from an image directory
// (epoch 0 + deltas up to --epoch), with its PIDs, in a new PID namespace; the
// app then runs detached from the CLI. Refusals (corrupt page, missing delta,
// changed file, PID in use, other kernel) name what is wrong.
import type { TtyMode } from '../../native/restorer.js';
import { UnderstudyError } from '../../util/errors.js';
import { EPOCH_MAX, intFlag, stringFlag, type Command } from '../command.js';

export const restoreCommand: Command = {
  name: 'restore',
  summary: 'restore an app from an image directory, same PIDs, detached (like criu restore -d)',
  usage: '-D DIR [--epoch N] [--tty null|inherit] [--check] [--json]',
  help:
    '  -D, --dir DIR      image directory written by `understudy dump` (epoch-NNNNNN/ inside)\n' +
    '  --epoch N          restore epoch N (epoch 0 plus deltas 1..N); default: the newest\n' +
    '  --tty MODE         a terminal the app had open becomes /dev/null (null, default)\n' +
    "                     or this command's terminal (inherit)\n" +
    '  --check            only check the image and this node; create nothing',
  options: {
    dir: { type: 'string', short: 'D' },
    epoch: { type: 'string' },
    tty: { type: 'string' },
    check: { type: 'boolean' },
  },
  needsRoot: true,
  async run(ctx, values) {
    const { restore } = await import('../../native/restorer.js');
    const dir = stringFlag(values, 'dir', '-D/--dir');
    const epoch = intFlag(values, 'epoch', 0, EPOCH_MAX);
    const tty = values.tty ?? 'null';
    if (tty !== 'null' && tty !== 'inherit') throw new UnderstudyError('E_USAGE', `--tty must be null or inherit, got ${String(tty)}`);
    const r = await restore({ imageDir: dir, epoch, tty: tty as TtyMode, checkOnly: values.check === true });
    if (ctx.json) {
      ctx.out(JSON.stringify(r, null, 2));
    } else if (r.checkOnly) {
      const pids = r.nsPid1 === 'root' ? 'it had a PID namespace of its own (its host pids are not needed)' : `pids ${r.pids.join(' ')} are free`;
      ctx.out(`epoch ${r.epoch} of image ${r.imageId} can be restored here: ${pids}, files and kernel match`);
    } else {
      ctx.out(
        `restored epoch ${r.epoch} in ${(r.restoreNs / 1e6).toFixed(1)} ms: host pids ${r.pids.join(' ')} (${r.threads} threads), ` +
          `${(r.bytes / 1048576).toFixed(1)} MiB of pages; pid 1 of its namespace is ${r.nsPid1 === 'root' ? 'the app itself' : `a reaper (host pid ${r.reaper})`}`,
      );
    }
    return 0;
  },
};
