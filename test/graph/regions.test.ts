// Region arithmetic: the splits the kernel does on munmap/mprotect/mmap, and
// merging neighbours the way /proc/PID/maps shows them.
import { describe, expect, it } from 'vitest';
import { cutRange, insertRegion, mergeRanges, normalizeRegions, type Region } from '../../src/graph/regions.js';

const r = (start: number, end: number, perms = 'rw-p', extra: Partial<Region> = {}): Region => ({ start, end, perms, offset: 0, ...extra });

describe('regions', () => {
  it('cuts a hole out of the middle of a region, keeping file offsets right', () => {
    const file = r(0x1000, 0x5000, 'r--p', { backing: 'file:1:2', offset: 0x10000 });
    expect(cutRange([file], 0x2000, 0x3000)).toEqual([
      r(0x1000, 0x2000, 'r--p', { backing: 'file:1:2', offset: 0x10000 }),
      r(0x3000, 0x5000, 'r--p', { backing: 'file:1:2', offset: 0x12000 }),
    ]);
  });

  it('inserts over existing regions (MAP_FIXED), sorted', () => {
    const list = [r(0x1000, 0x3000), r(0x5000, 0x6000)];
    expect(insertRegion(list, r(0x2000, 0x5800, 'r-xp'))).toEqual([r(0x1000, 0x2000), r(0x2000, 0x5800, 'r-xp'), r(0x5800, 0x6000, 'rw-p', { offset: 0x800 })]);
  });

  it('merges neighbours with the same perms and backing, not others', () => {
    const list = [r(0x1000, 0x2000), r(0x2000, 0x3000), r(0x3000, 0x4000, 'r--p'), r(0x5000, 0x6000)];
    expect(normalizeRegions(list)).toEqual([r(0x1000, 0x3000), r(0x3000, 0x4000, 'r--p'), r(0x5000, 0x6000)]);
    // file-backed: only when the offsets are contiguous too
    const f = (s: number, e: number, off: number) => r(s, e, 'r--p', { backing: 'file:1:2', offset: off });
    expect(normalizeRegions([f(0x1000, 0x2000, 0), f(0x2000, 0x3000, 0x1000)])).toHaveLength(1);
    expect(normalizeRegions([f(0x1000, 0x2000, 0), f(0x2000, 0x3000, 0x5000)])).toHaveLength(2);
  });

  it('merges overlapping and touching byte ranges', () => {
    expect(
      mergeRanges([
        [10, 20],
        [0, 5],
        [5, 8],
        [15, 30],
        [40, 41],
      ]),
    ).toEqual([
      [0, 8],
      [10, 30],
      [40, 41],
    ]);
  });
});
