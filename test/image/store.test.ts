// The image store: every page hash verified on read, truncated or corrupted
// entries refused naming the exact entry, deltas applied over the nearest full
// epoch, compaction folding them into a new base; and `understudy image`.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EngineClient } from '../../src/native/engine.js';
import { compact, listEpochs, memoryDigest, reconstruct, rewriteEpochMeta } from '../../src/image/store.js';
import { runCleanups, startFixture, tmp } from '../engine/helpers.js';
import { runCli as cli } from '../helpers/cli.js';

afterAll(runCleanups);

let image = '';
let pid = 0;

function copyImage(): string {
  const d = join(tmp('copy'), 'img');
  execFileSync('cp', ['-r', image, d]);
  return d;
}

beforeAll(async () => {
  const fx = await startFixture({ mb: 4, threads: 1 });
  pid = fx.pid;
  const engine = EngineClient.start();
  image = join(tmp('img'), 'chain');
  try {
    await engine.attach(fx.pid, { trackDirty: true });
    await engine.checkpoint({ imageDir: image });
    for (let i = 1; i <= 3; i++) {
      await fx.write(20 * i, i);
      await engine.checkpoint({ imageDir: image });
    }
  } finally {
    await engine.close();
    fx.kill();
  }
}, 60_000);

describe('image store', () => {
  it('rebuilds every epoch from epoch 0 and the deltas', () => {
    expect(listEpochs(image).map((e) => e.name)).toEqual(['epoch-000000', 'epoch-000001', 'epoch-000002', 'epoch-000003']);
    const r = reconstruct(image, 2);
    expect(r.used).toEqual(['epoch-000000', 'epoch-000001', 'epoch-000002']);
    expect(r.memory.get(pid)!.size).toBeGreaterThan(1024);
  });

  it('refuses a page with one byte flipped, naming the file and the page', () => {
    const d = copyImage();
    const f = join(d, 'epoch-000001', 'pages.bin');
    const b = readFileSync(f);
    b[4096 + 100] ^= 0xff; // second page of the epoch
    writeFileSync(f, b);
    expect(() => reconstruct(d)).toThrow(/epoch-000001\/pages\.bin: page 0x[0-9a-f]+ of pid \d+ \(byte 4096\) fails its crc32/);
    // epoch 0 alone is still fine
    expect(reconstruct(d, 0).epoch).toBe(0);
  });

  it('refuses a truncated pages.bin and a truncated or corrupted meta.pb', () => {
    let d = copyImage();
    const pages = join(d, 'epoch-000002', 'pages.bin');
    truncateSync(pages, statSync(pages).size - 10);
    expect(() => reconstruct(d)).toThrow(/epoch-000002\/pages\.bin: \d+ bytes but the metadata says \d+ \(truncated/);
    d = copyImage();
    const meta = join(d, 'epoch-000003', 'meta.pb');
    truncateSync(meta, statSync(meta).size - 3);
    expect(() => reconstruct(d)).toThrow(/epoch-000003\/meta\.pb: frame claims \d+ bytes/);
    d = copyImage();
    const m2 = join(d, 'epoch-000001', 'meta.pb');
    const b = readFileSync(m2);
    b[20] ^= 0x01;
    writeFileSync(m2, b);
    expect(() => reconstruct(d)).toThrow(/epoch-000001\/meta\.pb: metadata crc32 mismatch/);
  });

  it('refuses a missing delta and a delta of another chain, with the code the C reader gives (E_IMAGE_CHAIN)', () => {
    let d = copyImage();
    rmSync(join(d, 'epoch-000002'), { recursive: true });
    expect(() => reconstruct(d, 3)).toThrow(/delta epoch-000002 is missing/);
    expect(() => reconstruct(d, 3)).toThrow(expect.objectContaining({ code: 'E_IMAGE_CHAIN' }));
    expect(reconstruct(d, 1).epoch).toBe(1);
    d = copyImage();
    // a delta from another image, renamed into this chain
    const other = copyImage();
    // the same epoch with a foreign image id (valid frame and crc)
    rewriteEpochMeta(join(other, 'epoch-000001'), (m) => {
      m.imageId = 'ffffffffffffffffffffffffffffffff';
    });
    rmSync(join(d, 'epoch-000001'), { recursive: true });
    execFileSync('cp', ['-r', join(other, 'epoch-000001'), join(d, 'epoch-000001')]);
    expect(() => reconstruct(d)).toThrow(/epoch-000001: belongs to image ffffffff/);
    expect(() => reconstruct(d)).toThrow(expect.objectContaining({ code: 'E_IMAGE_CHAIN' }));
  });

  it('compaction folds deltas into a base that rebuilds the same memory', () => {
    const d = copyImage();
    const before2 = memoryDigest(reconstruct(d, 2).memory.get(pid)!);
    const before3 = memoryDigest(reconstruct(d, 3).memory.get(pid)!);
    const r = compact(d, 2);
    expect(r.base).toMatch(/base-000002$/);
    const after2 = reconstruct(d, 2);
    expect(after2.used).toEqual(['base-000002']);
    expect(memoryDigest(after2.memory.get(pid)!)).toBe(before2);
    const after3 = reconstruct(d, 3);
    expect(after3.used).toEqual(['base-000002', 'epoch-000003']);
    expect(memoryDigest(after3.memory.get(pid)!)).toBe(before3);
    // prune: the base replaces what it folded
    const d2 = copyImage();
    compact(d2, 2, { prune: true });
    expect(readdirSync(d2).sort()).toEqual(['base-000002', 'epoch-000003']);
    expect(memoryDigest(reconstruct(d2).memory.get(pid)!)).toBe(before3);
  });

  it('a prune stopped midway leaves only whole epochs, each still rebuilt', () => {
    const d = copyImage();
    const before1 = memoryDigest(reconstruct(d, 1).memory.get(pid)!);
    // epoch-000001 is a mount point, which rename(2) refuses (EBUSY): the prune stops there
    const stuck = join(d, 'epoch-000001');
    execFileSync('mount', ['--bind', stuck, stuck]);
    try {
      expect(() => compact(d, 2, { prune: true })).toThrow(/compacting .* into base-000002: .*EBUSY/);
    } finally {
      execFileSync('umount', [stuck]);
    }
    // newest first: epoch-000002 left the chain, 0 and 1 are whole and still rebuild
    expect(
      readdirSync(d)
        .filter((n) => !n.startsWith('.'))
        .sort(),
    ).toEqual(['base-000002', 'epoch-000000', 'epoch-000001', 'epoch-000003']);
    expect(memoryDigest(reconstruct(d, 1).memory.get(pid)!)).toBe(before1);
    expect(reconstruct(d).used).toEqual(['base-000002', 'epoch-000003']);
    // the next prune finishes the job and leaves no hidden leftover
    mkdirSync(join(d, '.pruned-epoch-000001'));
    writeFileSync(join(d, '.pruned-epoch-000001', 'meta.pb'), 'leftover of an interrupted prune');
    compact(d, 3, { prune: true });
    expect(readdirSync(d).sort()).toEqual(['base-000003']);
  });
});

describe('understudy image', () => {
  it('show: a summary per epoch, details and registers for one epoch, JSON', async () => {
    let r = await cli(['image', 'show', image]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/epoch-000000 {2}full /);
    expect(r.stdout).toMatch(/epoch-000003 {2}delta over 2 /);
    r = await cli(['image', 'show', image, '--epoch', '0']);
    expect(r.stdout).toMatch(new RegExp(`thread ${pid} \\(dirty_pages\\) rip 0x[0-9a-f]+ rsp 0x[0-9a-f]+`));
    expect(r.stdout).toMatch(/\[vdso\]/);
    expect(r.stdout).toMatch(/libc\.so\.6 build-id [0-9a-f]{40}/);
    r = await cli(['image', 'show', image, '--epoch', '1', '--json']);
    const j = JSON.parse(r.stdout) as { epochs: { epoch: number; processes: { pid: number; threads: { regs: { rip: string } }[] }[] }[] };
    expect(j.epochs[0]!.epoch).toBe(1);
    expect(j.epochs[0]!.processes[0]!.pid).toBe(pid);
    expect(j.epochs[0]!.processes[0]!.threads[0]!.regs.rip).toMatch(/^0x[0-9a-f]+$/);
  });

  it('verify passes on a good image and names the entry on a bad one', async () => {
    let r = await cli(['image', 'verify', image]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/ok: 4 epoch\(s\)/);
    const d = copyImage();
    const f = join(d, 'epoch-000003', 'pages.bin');
    const b = readFileSync(f);
    b[7] ^= 0x10;
    writeFileSync(f, b);
    r = await cli(['image', 'verify', d]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/epoch-000003\/pages\.bin: page 0x[0-9a-f]+ .* fails its crc32/);
  });

  it('refuses a directory that is not an image and changes nothing', async () => {
    const d = tmp('notimage');
    writeFileSync(join(d, 'hello.txt'), 'hi');
    mkdirSync(join(d, 'epochs'));
    const r = await cli(['image', 'show', d]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/is not an Understudy image: it has no epoch-NNNNNN/);
    expect(readdirSync(d).sort()).toEqual(['epochs', 'hello.txt']);
    const r2 = await cli(['image', 'show', join(d, 'missing')]);
    expect(r2.exitCode).toBe(1);
    expect(r2.stderr).toMatch(/cannot read it as an image directory/);
    const r3 = await cli(['image', 'compact', d]);
    expect(r3.exitCode).toBe(1);
    expect(readdirSync(d).sort()).toEqual(['epochs', 'hello.txt']);
  });
});
