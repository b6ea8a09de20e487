// Reconciliation with /proc: what the events missed (losses, processes not
// yet known) is repaired, and counted.
import { logger } from '../util/log.js';
import { readProcess } from './fromproc.js';
import { readChildren } from '../proc/procfs.js';
import { normalizeRegions, type Region } from './regions.js';
import type { GraphState } from './store.js';

const log = logger('graph');

export interface ReconcileReport {
  processes: number;
  threads: number;
  fds: number;
  regions: number;
  total: number;
}

/** Compares with /proc and repairs drift (changes logged at g.at); returns what was repaired. */
export function reconcile(g: GraphState): ReconcileReport {
  const rep: ReconcileReport = { processes: 0, threads: 0, fds: 0, regions: 0, total: 0 };
  // Known processes: one read of /proc each, which also says whether it is gone.
  for (const p of [...g.processes.values()]) {
    const fresh = readProcess(g, p.pid);
    if (!fresh) {
      g.removeProcess(p);
      rep.processes++;
      continue;
    }
    // threads
    for (const t of fresh.threads) if (!p.threads.has(t)) rep.threads++;
    for (const t of p.threads) if (!fresh.threads.has(t)) rep.threads++;
    p.threads = fresh.threads;
    // fds: same number, same object
    for (const [fd, r] of fresh.fds) {
      if (p.fds.get(fd) !== r && !(r.startsWith('anon:') && p.fds.get(fd)?.startsWith('anon:'))) {
        rep.fds++;
        p.fds.set(fd, r);
        g.log({ k: 'fd', pid: p.pid, fd, change: 'opened', resource: r });
      }
    }
    for (const fd of [...p.fds.keys()]) {
      if (!fresh.fds.has(fd)) {
        rep.fds++;
        g.closeFd(p, fd);
      }
    }
    // regions, compared as the kernel shows them (merged)
    const key = (r: Region): string => `${r.start}-${r.end} ${r.perms}`;
    const mine = new Set(normalizeRegions(p.regions).map(key));
    const theirs = new Set(normalizeRegions(fresh.regions).map(key));
    let diff = 0;
    for (const k of theirs) if (!mine.has(k)) diff++;
    for (const k of mine) if (!theirs.has(k)) diff++;
    if (diff > 0) {
      rep.regions += diff;
      p.regions = fresh.regions;
    }
  }
  // Children of app processes never seen (found from the threads just read): read fresh, nothing to compare.
  for (const pid of unseenChildren(g)) {
    const p = readProcess(g, pid);
    if (p) {
      g.processes.set(pid, p);
      g.log({ k: 'process', pid, change: 'created' });
      rep.processes++;
    }
  }
  rep.total = rep.processes + rep.threads + rep.fds + rep.regions;
  if (rep.total > 0) log.info({ repaired: rep }, 'reconciliation repaired drift from /proc');
  else log.debug({ processes: g.processes.size }, 'reconciliation: no drift from /proc');
  return rep;
}

/** Children of the app's processes the graph does not know (from /proc's children lists). */
function unseenChildren(g: GraphState): number[] {
  const out: number[] = [];
  for (const p of g.processes.values()) {
    // children of every thread (readChildren gives '' for a thread that is gone)
    const kids = [...p.threads].map((t) => readChildren(p.pid, t)).join(' ');
    for (const k of kids
      .split(/\s+/)
      .filter((s) => s !== '')
      .map(Number))
      if (!g.processes.has(k)) out.push(k);
  }
  return out;
}
