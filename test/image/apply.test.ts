// applyDelta's rules on synthetic epochs (no engine): what a delta's reset and
// zeroed ranges, its region list and its process list do to the memory of the
// epoch before. The restore side rebuilds memory with exactly these rules.
import { describe, expect, it } from 'vitest';
import { understudy } from '../../src/gen/proto.js';
import { applyDelta, type PageMap } from '../../src/image/store.js';

const P = 4096;
const page = (b: number): Buffer => Buffer.alloc(P, b);

function meta(
  full: boolean,
  procs: { pid: number; vmas: [number, number][]; reset?: [number, number][]; zeroed?: [number, number][]; newProcess?: boolean }[],
) {
  return understudy.v1.EpochMeta.create({
    version: 1,
    full,
    processes: procs.map((p) =>
      understudy.v1.Process.create({
        pid: p.pid,
        vmas: p.vmas.map(([start, end]) => understudy.v1.Vma.create({ start, end })),
        reset: (p.reset ?? []).map(([start, end]) => understudy.v1.Range.create({ start, end })),
        zeroed: (p.zeroed ?? []).map(([start, end]) => understudy.v1.Range.create({ start, end })),
        newProcess: p.newProcess ?? false,
      }),
    ),
  });
}

function pages(entries: [number, number, number][]): Map<number, PageMap> {
  const m = new Map<number, PageMap>();
  for (const [pid, addr, b] of entries) {
    if (!m.has(pid)) m.set(pid, new Map());
    m.get(pid)!.set(addr, page(b));
  }
  return m;
}

const bytes = (mem: Map<number, PageMap>, pid: number): Record<string, number> =>
  Object.fromEntries(
    [...(mem.get(pid) ?? new Map<number, Buffer>()).entries()].sort((a, b) => a[0] - b[0]).map(([a, buf]) => [`0x${a.toString(16)}`, buf[0]!]),
  );

describe('applyDelta', () => {
  const A = 0x10000;
  it('lays written pages over the parent, keeps the rest', () => {
    const mem = new Map<number, PageMap>();
    applyDelta(
      mem,
      meta(true, [{ pid: 1, vmas: [[A, A + 4 * P]] }]),
      pages([
        [1, A, 1],
        [1, A + P, 1],
        [1, A + 2 * P, 1],
      ]),
    );
    applyDelta(
      mem,
      meta(false, [{ pid: 1, vmas: [[A, A + 4 * P]] }]),
      pages([
        [1, A + P, 2],
        [1, A + 3 * P, 2],
      ]),
    );
    expect(bytes(mem, 1)).toEqual({ '0x10000': 1, '0x11000': 2, '0x12000': 1, '0x13000': 2 });
  });

  it('zeroed ranges drop pages (they read as zero again); reset ranges void the old content', () => {
    const mem = new Map<number, PageMap>();
    applyDelta(
      mem,
      meta(true, [{ pid: 1, vmas: [[A, A + 4 * P]] }]),
      pages([
        [1, A, 1],
        [1, A + P, 1],
        [1, A + 2 * P, 1],
        [1, A + 3 * P, 1],
      ]),
    );
    applyDelta(mem, meta(false, [{ pid: 1, vmas: [[A, A + 4 * P]], zeroed: [[A, A + P]], reset: [[A + 2 * P, A + 4 * P]] }]), pages([[1, A + 3 * P, 3]]));
    expect(bytes(mem, 1)).toEqual({ '0x11000': 1, '0x13000': 3 });
  });

  it('pages outside every region of the delta are gone (unmapped); a process not in the delta is gone', () => {
    const mem = new Map<number, PageMap>();
    applyDelta(
      mem,
      meta(true, [
        {
          pid: 1,
          vmas: [
            [A, A + 2 * P],
            [A + 8 * P, A + 9 * P],
          ],
        },
        { pid: 2, vmas: [[A, A + P]] },
      ]),
      pages([
        [1, A, 1],
        [1, A + P, 1],
        [1, A + 8 * P, 1],
        [2, A, 5],
      ]),
    );
    applyDelta(mem, meta(false, [{ pid: 1, vmas: [[A, A + P]] }]), pages([]));
    expect(bytes(mem, 1)).toEqual({ '0x10000': 1 });
    expect(mem.has(2)).toBe(false);
  });

  it('a new process (or a full epoch) starts from nothing', () => {
    const mem = new Map<number, PageMap>();
    applyDelta(
      mem,
      meta(true, [{ pid: 1, vmas: [[A, A + 2 * P]] }]),
      pages([
        [1, A, 1],
        [1, A + P, 1],
      ]),
    );
    // pid 1 was replaced by a new process with the same pid (exited, reused)
    applyDelta(mem, meta(false, [{ pid: 1, vmas: [[A, A + 2 * P]], newProcess: true }]), pages([[1, A + P, 9]]));
    expect(bytes(mem, 1)).toEqual({ '0x11000': 9 });
    applyDelta(mem, meta(true, [{ pid: 1, vmas: [[A, A + 2 * P]] }]), pages([[1, A, 4]]));
    expect(bytes(mem, 1)).toEqual({ '0x10000': 4 });
  });
});
