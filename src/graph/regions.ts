// Address ranges: memory regions as /proc/PID/maps shows them, and byte ranges
// of files. Pure functions over sorted lists.

export interface Region {
  start: number;
  end: number;
  /** As /proc/PID/maps shows it: r/-, w/-, x/-, p/s. */
  perms: string;
  offset: number;
  /** Graph id of what backs it (a file, a SysV segment) or a name like [heap]; undefined: anonymous. */
  backing?: string;
}

export function protPerms(prot: number, shared: boolean): string {
  return `${prot & 1 ? 'r' : '-'}${prot & 2 ? 'w' : '-'}${prot & 4 ? 'x' : '-'}${shared ? 's' : 'p'}`;
}

export function hex(n: number): string {
  return '0x' + n.toString(16);
}

/** Removes [s, e) from a sorted region list, splitting regions that straddle it. */
export function cutRange(list: Region[], s: number, e: number): Region[] {
  const out: Region[] = [];
  for (const r of list) {
    if (r.end <= s || r.start >= e) {
      out.push(r);
      continue;
    }
    if (r.start < s) out.push({ ...r, end: s });
    if (r.end > e) out.push({ ...r, start: e, offset: r.offset + (e - r.start) });
  }
  return out;
}

export function insertRegion(list: Region[], r: Region): Region[] {
  const out = cutRange(list, r.start, r.end);
  out.push(r);
  out.sort((a, b) => a.start - b.start);
  return out;
}

/** Merges neighbours the kernel would show as one VMA: same perms and backing, contiguous. */
export function normalizeRegions(list: Region[]): Region[] {
  const out: Region[] = [];
  for (const r of [...list].sort((a, b) => a.start - b.start)) {
    const last = out[out.length - 1];
    if (
      last &&
      last.end === r.start &&
      last.perms === r.perms &&
      last.backing === r.backing &&
      (last.backing === undefined || last.backing.startsWith('[') || last.offset + (last.end - last.start) === r.offset)
    ) {
      out[out.length - 1] = { ...last, end: r.end };
    } else {
      out.push({ ...r });
    }
  }
  return out;
}

export function mergeRanges(ranges: [number, number][]): [number, number][] {
  const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else out.push([r[0], r[1]]);
  }
  return out;
}
