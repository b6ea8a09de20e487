// A hot clone: one restorer builds the clone at epoch 0 (seized, stopped),
// applies deltas 1..20 in place one after the other, then resumes it. Before
// the resume its memory is compared, page by page in every private region of
// every process, and its region map line by line, with a clone of epoch 20
// built directly; after it the fixture checks its own state and says PASS.
import { closeSync, openSync, readdirSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { RestoreError, RestorerClient, type CloneInfo } from '../../src/native/restorer.js';
import { readEpochMeta, processesOf, rewriteEpochMeta } from '../../src/image/store.js';
import { dumpAndKill, epochDir, exists, killPids, lateForkChain, onCleanup, runCleanups, startFixture, tmp, verdict, waitFor } from './helpers.js';

afterEach(runCleanups);

const STUB_BYTES = 64 * 4096;

interface Region {
  line: string;
  start: number;
  end: number;
  data?: Buffer;
}

/** The region map of pid (without the restorer's stub) and the content of every private region but the kernel's. */
function snapshot(pid: number, stub: number): Region[] {
  const out: Region[] = [];
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  try {
    for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n')) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) (\S+) (\S+) (\d+)\s*(.*)$/.exec(line);
      if (!m) throw new Error(`unreadable maps line of pid ${pid}: ${line}`);
      const start = parseInt(m[1]!, 16);
      const end = parseInt(m[2]!, 16);
      if (start >= stub && end <= stub + STUB_BYTES) continue;
      const r: Region = { line: line.replace(/\s+/g, ' '), start, end };
      const name = m[7] ?? '';
      if (m[3]![3] === 'p' && !/^\[(vdso|vvar|vvar_vclock|vsyscall)\]$/.test(name)) {
        r.data = Buffer.alloc(end - start);
        let got = 0;
        while (got < r.data.length) {
          const n = readSync(fd, r.data, got, r.data.length - got, start + got);
          if (n <= 0) throw new Error(`short read of pid ${pid} at 0x${(start + got).toString(16)}`);
          got += n;
        }
      }
      out.push(r);
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/**
 * The rseq areas of pid's threads at the epoch: the kernel writes the CPU a
 * thread last ran on into them whenever it returns to user space (here: after
 * every injected call), so they hold whichever CPU the restorer ran on, in
 * either clone, until the app runs and the kernel rewrites them.
 */
function rseqAreas(img: string, epoch: number, pid: number): [number, number][] {
  const p = processesOf(readEpochMeta(epochDir(img, epoch))).find((x) => x.pid === pid);
  return (p?.threads ?? [])
    .filter((t) => t.rseq && Number(t.rseq.abiPointer) > 0)
    .map((t) => [Number(t.rseq!.abiPointer), Number(t.rseq!.abiPointer) + Math.max(32, t.rseq!.abiSize ?? 0)]);
}

function mask(regions: Region[], areas: [number, number][]): void {
  for (const r of regions)
    for (const [s, e] of areas) if (r.data && s < r.end && e > r.start) r.data.fill(0, Math.max(s, r.start) - r.start, Math.min(e, r.end) - r.start);
}

function compare(pid: number, got: Region[], want: Region[]): void {
  expect(
    got.map((r) => r.line),
    `pid ${pid}: the region map after 20 in-place deltas is that of epoch 20`,
  ).toEqual(want.map((r) => r.line));
  let pages = 0;
  for (let i = 0; i < want.length; i++) {
    const a = got[i]!.data;
    const b = want[i]!.data;
    if (!a || !b) continue;
    for (let off = 0; off < b.length; off += 4096) {
      pages++;
      if (a.compare(b, off, off + 4096, off, off + 4096) !== 0) {
        throw new Error(`pid ${pid}: page 0x${(want[i]!.start + off).toString(16)} (${want[i]!.line}) differs from epoch 20's`);
      }
    }
  }
  expect(pages, `pid ${pid}: pages compared`).toBeGreaterThan(0);
}

async function gone(c: CloneInfo): Promise<void> {
  const pids = [c.reaper, ...c.pids].filter((p) => p > 0);
  await waitFor(`pids ${pids.join(',')} to be free`, () => pids.every((p) => !exists(p)), 10_000);
}

/**
 * Every process of session sid gone. The fixture leads its session; a child
 * it forks while the engine kills the app can escape the kill, and holds the
 * session's id (the root's pid) for as long as it lives: the root's pid is
 * then not free for a clone.
 */
async function killSession(sid: number): Promise<void> {
  const members = (): number[] =>
    readdirSync('/proc')
      .filter((n) => /^\d+$/.test(n))
      .map(Number)
      .filter((p) => {
        try {
          const st = readFileSync(`/proc/${p}/stat`, 'utf8');
          return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[3]) === sid;
        } catch {
          return false;
        }
      });
  await waitFor(`session ${sid} to be empty`, () => {
    const m = members();
    killPids(m);
    return m.length === 0;
  });
}

function start(): RestorerClient {
  const r = RestorerClient.start({ timeoutMs: 60_000 });
  onCleanup(() => r.kill());
  return r;
}

interface Totals {
  pages: number;
  mapped: number;
  unmapped: number;
  reprotected: number;
  procsAdded: number;
  procsRemoved: number;
  threadsAdded: number;
  threadsRemoved: number;
  fdsOpened: number;
  fdsClosed: number;
}

/** Epoch 20 built directly (the reference), then epoch 0 built and 1..20 applied in place: both compared, then resumed. */
async function hotClone(img: string, ctl: string, deltas: number): Promise<{ clone: CloneInfo; totals: Totals }> {
  const ref = start();
  const direct = await ref.build({ imageDir: img, epoch: deltas });
  expect(direct.epoch).toBe(deltas);
  expect(direct.stub).toBeGreaterThan(0);
  const want = new Map(direct.pids.map((p) => [p, snapshot(p, direct.stub)]));
  for (const [p, r] of want) mask(r, rseqAreas(img, deltas, p));
  const killed = await ref.abort();
  expect(new Set(killed)).toEqual(new Set([direct.reaper, ...direct.pids].filter((p) => p > 0)));
  await ref.close();
  await gone(direct);

  const hot = start();
  const b0 = await hot.build({ imageDir: img, epoch: 0 });
  expect(b0.epoch).toBe(0);
  const totals: Totals = {
    pages: 0,
    mapped: 0,
    unmapped: 0,
    reprotected: 0,
    procsAdded: 0,
    procsRemoved: 0,
    threadsAdded: 0,
    threadsRemoved: 0,
    fdsOpened: 0,
    fdsClosed: 0,
  };
  let pids = b0.pids;
  for (let e = 1; e <= deltas; e++) {
    const a = await hot.apply(e);
    expect(a.epoch).toBe(e);
    totals.pages += a.pages;
    totals.mapped += a.regionsMapped;
    totals.unmapped += a.regionsUnmapped;
    totals.reprotected += a.regionsReprotected;
    totals.procsAdded += a.processesAdded;
    totals.threadsAdded += a.threadsAdded;
    totals.procsRemoved += a.processesRemoved;
    totals.threadsRemoved += a.threadsRemoved;
    totals.fdsOpened += a.fdsOpened;
    totals.fdsClosed += a.fdsClosed;
    pids = a.pids;
  }
  expect([...pids].sort()).toEqual([...direct.pids].sort());
  for (const p of direct.pids) {
    const got = snapshot(p, b0.stub);
    mask(got, rseqAreas(img, deltas, p));
    compare(p, got, want.get(p)!);
  }
  const clone = await hot.resume();
  onCleanup(() => killPids([clone.reaper, ...clone.pids]));
  expect(clone.epoch).toBe(deltas);
  await hot.close();
  expect(await verdict(ctl)).toBe('PASS');
  return { clone, totals };
}

describe('a hot clone: deltas applied in place to a stopped clone', () => {
  it("rs_malloc (two threads, malloc/free, mmap'd blocks): epoch 0 + 20 deltas in place == epoch 20, then PASS", async () => {
    const ctl = tmp('hot-malloc');
    const img = join(tmp('hot-malloc-img'), 'image');
    const fx = await startFixture('rs_malloc', ctl);
    await dumpAndKill(fx.pid, img, 20, 20);
    const { clone, totals } = await hotClone(img, ctl, 20);
    expect(clone.pids).toEqual([fx.pid]);
    expect(clone.threads).toBe(2);
    expect(totals.pages).toBeGreaterThan(20);
    // large blocks come and go with mmap/munmap: regions were created and removed in place
    expect(totals.mapped).toBeGreaterThan(0);
    expect(totals.unmapped).toBeGreaterThan(0);
  });

  it('rs_forktree (root -> child -> grandchild): every process patched in place == epoch 20, then PASS', async () => {
    const ctl = tmp('hot-tree');
    const img = join(tmp('hot-tree-img'), 'image');
    const fx = await startFixture('rs_forktree', ctl);
    const d = await dumpAndKill(fx.pid, img, 20);
    expect(d.pids).toHaveLength(3);
    const { clone, totals } = await hotClone(img, ctl, 20);
    expect([...clone.pids].sort()).toEqual([...d.pids].sort());
    expect(totals.pages).toBeGreaterThan(0);
  });

  it('rs_latefork: a process and a thread born mid-chain are created in place by their real parent, same ids, then PASS', async () => {
    const ctl = tmp('hot-late');
    const img = join(tmp('hot-late-img'), 'image');
    const { fx, child } = await lateForkChain(ctl, img);
    const { clone, totals } = await hotClone(img, ctl, 20);
    expect([...clone.pids].sort()).toEqual([fx.pid, child].sort());
    expect(totals.procsAdded).toBe(1);
    expect(totals.threadsAdded).toBe(1);
  });

  it('rs_churn: regions moved (mremap), re-protected, re-mapped, files opened and closed, children and threads born and exited between epochs, all in place, then PASS', async () => {
    const ctl = tmp('hot-churn');
    const img = join(tmp('hot-churn-img'), 'image');
    const fx = await startFixture('rs_churn', ctl);
    await dumpAndKill(fx.pid, img, 20, 10, async (epoch) => {
      if (epoch === 0) writeFileSync(join(ctl, 'churn'), '');
    });
    await killSession(fx.pid);
    const { clone, totals } = await hotClone(img, ctl, 20);
    expect(clone.pids[0]).toBe(fx.pid);
    expect(totals.mapped).toBeGreaterThan(0);
    expect(totals.unmapped).toBeGreaterThan(0);
    expect(totals.reprotected).toBeGreaterThan(0);
    expect(totals.procsAdded, 'children born between epochs').toBeGreaterThan(0);
    expect(totals.procsRemoved, 'children exited between epochs').toBeGreaterThan(0);
    expect(totals.threadsAdded, 'threads born between epochs').toBeGreaterThan(0);
    expect(totals.threadsRemoved, 'threads exited between epochs').toBeGreaterThan(0);
    expect(totals.fdsOpened, 'files opened between epochs').toBeGreaterThan(0);
    expect(totals.fdsClosed, 'files closed between epochs').toBeGreaterThan(0);
  });

  it('a delta out of order is refused and the clone is killed, nothing of it left', async () => {
    const ctl = tmp('hot-order');
    const img = join(tmp('hot-order-img'), 'image');
    const fx = await startFixture('rs_counter', ctl);
    await dumpAndKill(fx.pid, img, 3);
    const r = start();
    const b = await r.build({ imageDir: img, epoch: 0 });
    const err = await r.apply(2).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RestoreError);
    expect((err as RestoreError).code).toBe('E_IMAGE_CHAIN');
    expect((err as RestoreError).message).toContain('epoch 2 cannot be applied to a clone at epoch 0');
    expect(new Set((err as RestoreError).killed)).toEqual(new Set([b.reaper, ...b.pids].filter((p) => p > 0)));
    await gone(b);
    // the restorer itself is still there for the next clone: built at 1, then 2 and 3 in place
    await r.build({ imageDir: img, epoch: 1 });
    await r.apply(2);
    await r.apply(3);
    const c = await r.resume();
    onCleanup(() => killPids([c.reaper, ...c.pids]));
    expect(c.pids).toEqual([fx.pid]);
    await r.close();
    expect(await verdict(ctl)).toBe('PASS');
  });

  it('a change the apply does not rebuild (here a process group moved) is refused before the clone is touched, and the clone is killed', async () => {
    const ctl = tmp('hot-refuse');
    const img = join(tmp('hot-refuse-img'), 'image');
    const fx = await startFixture('rs_counter', ctl);
    await dumpAndKill(fx.pid, img, 2);
    rewriteEpochMeta(epochDir(img, 2), (m) => {
      const p = processesOf(m).find((x) => x.pid === fx.pid)!;
      p.pgid = p.pgid + 1;
    });
    const r = start();
    const b = await r.build({ imageDir: img, epoch: 0 });
    await r.apply(1);
    const err = await r.apply(2).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RestoreError);
    expect((err as RestoreError).code).toBe('E_UNSUPPORTED');
    expect((err as RestoreError).message).toContain(`epoch 2 cannot be applied in place: pid ${fx.pid}: its parent, session or process group changed`);
    expect(new Set((err as RestoreError).killed)).toEqual(new Set([b.reaper, ...b.pids].filter((p) => p > 0)));
    await gone(b);
    await r.close();
  });

  it('a clone held when its agent goes away dies with it: the request stream closed, or the restorer killed', async () => {
    const ctl = tmp('hot-gone');
    const img = join(tmp('hot-gone-img'), 'image');
    const fx = await startFixture('rs_malloc', ctl);
    await dumpAndKill(fx.pid, img, 2);
    const r1 = start();
    const b1 = await r1.build({ imageDir: img, epoch: 0 });
    await r1.apply(1);
    expect(b1.pids.every((p) => exists(p))).toBe(true);
    await r1.close(); // end of the request stream: an abort
    await gone(b1);
    const r2 = start();
    const b2 = await r2.build({ imageDir: img, epoch: 1 });
    expect(b2.pids).toEqual([fx.pid]);
    r2.kill('SIGKILL'); // PTRACE_O_EXITKILL and the reaper's PDEATHSIG
    await gone(b2);
  });
});
