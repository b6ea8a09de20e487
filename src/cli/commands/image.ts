// `understudy image show|verify|compact DIR`: inspect an image as a person
// (like CRIU's crit), check every hash, fold deltas into a new base.
import { UnderstudyError } from '../../util/errors.js';
import { EPOCH_MAX, intFlag, type Command } from '../command.js';

export const imageCommand: Command = {
  name: 'image',
  summary: 'inspect (show), check (verify) or compact an image directory',
  usage: 'show DIR [--epoch N] [--pages] [--json] | verify DIR [--json] | compact DIR [--epoch N] [--prune] [--json]',
  help:
    '  show DIR        epochs, processes, threads, regions, fds (details for one epoch with --epoch)\n' +
    '  verify DIR      read every epoch and check every page hash; rebuild the latest epoch\n' +
    '  compact DIR     fold epoch 0..N (default latest) into base-N; --prune removes what it replaces\n' +
    '  --epoch N       the epoch to show or compact\n' +
    '  --pages         list page runs in --json output',
  options: {
    epoch: { type: 'string' },
    pages: { type: 'boolean' },
    prune: { type: 'boolean' },
  },
  positionals: true,
  needsRoot: false,
  async run(ctx, values, positionals) {
    const { compact, listEpochs, readEpochMeta, readEpochPages, reconstruct } = await import('../../image/store.js');
    const { showImage } = await import('../../image/show.js');
    const [sub, dir, ...rest] = positionals;
    if (!sub || !dir || rest.length) throw new UnderstudyError('E_USAGE', 'usage: understudy image show|verify|compact DIR');
    const epoch = intFlag(values, 'epoch', 0, EPOCH_MAX);
    switch (sub) {
      case 'show': {
        if (epoch !== undefined && !listEpochs(dir).some((e) => e.epoch === epoch)) {
          throw new UnderstudyError('E_USAGE', `${dir} has no epoch ${epoch}`);
        }
        ctx.out(showImage(dir, { epoch, json: ctx.json, pages: values.pages === true }));
        return 0;
      }
      case 'verify': {
        let pages = 0;
        const entries = listEpochs(dir);
        for (const e of entries) {
          const m = readEpochMeta(e.path);
          for (const pm of readEpochPages(e.path, m).values()) pages += pm.size;
        }
        const r = reconstruct(dir);
        const live = [...r.memory.values()].reduce((s, pm) => s + pm.size, 0);
        const res = { dir, ok: true, epochs: entries.length, pagesVerified: pages, latestEpoch: r.epoch, latestPages: live, chain: r.used };
        ctx.out(
          ctx.json
            ? JSON.stringify(res, null, 2)
            : `ok: ${entries.length} epoch(s), ${pages} pages verified; epoch ${r.epoch} rebuilt from ${r.used.join(' + ')} (${live} pages)`,
        );
        return 0;
      }
      case 'compact': {
        const r = compact(dir, epoch, { prune: values.prune === true });
        ctx.out(ctx.json ? JSON.stringify(r, null, 2) : `wrote ${r.base} (${r.pages} pages)${r.pruned.length ? `; removed ${r.pruned.join(', ')}` : ''}`);
        return 0;
      }
      default:
        throw new UnderstudyError('E_USAGE', `unknown image subcommand "${sub}" (show, verify, compact)`);
    }
  },
};
