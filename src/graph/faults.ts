// The kernel's write-fault counts (per process and region) taken into the
// graph: the increase since the last reading is logged as a written region.
import type { WriteFaultCount } from '../trace/tracer.js';
import type { GraphState } from './store.js';

const PAGE = 4096;

/** Takes the kernel's write-fault counts; the increase since the last call is logged per region, at g.at. */
export function applyWriteFaults(g: GraphState, faults: WriteFaultCount[]): void {
  for (const f of faults) {
    // a process gone (its entries not removed from the kernel map yet), or not
    // known yet (its fork not applied): nothing to log now; a known one's count
    // is taken when it is known, its baseline untouched until then
    const p = g.processes.get(f.tgid);
    if (!p) continue;
    let base = g.faultBaseline.get(f.tgid);
    if (!base) g.faultBaseline.set(f.tgid, (base = new Map()));
    const before = base.get(f.address) ?? 0;
    if (f.count <= before) continue;
    base.set(f.address, f.count);
    const r = p.regions.find((x) => f.address >= x.start && f.address < x.end);
    const start = f.resolved ? f.address : (r?.start ?? f.address);
    const end = r ? r.end : f.address + PAGE;
    g.log({ k: 'region', pid: f.tgid, start, end, change: 'written', writeFaults: f.count - before });
  }
}
