// Bad input: a corrupted page, a missing or foreign delta, a file changed
// behind a mapping, a PID already in use, a failure half way. Each is refused
// with an error naming it, and nothing of the app is left running.
import {
  copyFileSync,
  cpSync,
  readdirSync,
  readFileSync,
  rmSync,
  existsSync,
  statSync,
  writeFileSync,
  openSync,
  readSync,
  writeSync,
  closeSync,
} from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { RestoreError, restore } from '../../src/native/restorer.js';
import { nativeBinary } from '../../src/util/paths.js';
import { readEpochMeta, processesOf } from '../../src/image/store.js';
import { EngineClient } from '../../src/native/engine.js';
import {
  alive,
  dumpAndKill,
  killPids,
  onCleanup,
  runCleanups,
  sleep,
  startAndDump,
  startFixture,
  startInOwnNamespace,
  tmp,
  verdict,
  waitFor,
} from './helpers.js';

afterEach(runCleanups);

async function refused(imageDir: string, env?: Record<string, string>): Promise<RestoreError> {
  const saved = { ...process.env };
  Object.assign(process.env, env ?? {});
  try {
    const r = await restore({ imageDir });
    killPids([r.reaper, ...r.pids]);
    throw new Error(`restore of ${imageDir} was not refused: pids ${r.pids.join(' ')}`);
  } catch (e) {
    if (!(e instanceof RestoreError)) throw e;
    return e;
  } finally {
    process.env = saved;
  }
}

/** No process of the app, and nothing the restorer created, is alive. */
function nothingRunning(pids: number[], err: RestoreError): void {
  for (const p of [...pids, ...err.killed]) expect(alive(p), `pid ${p} is not running`).toBe(false);
}

function flipByte(path: string, offset: number): void {
  const fd = openSync(path, 'r+');
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, offset);
  b[0] = b[0]! ^ 0x5a;
  writeSync(fd, b, 0, 1, offset);
  closeSync(fd);
}

describe('restore refuses bad input', () => {
  it('a corrupted page (one byte flipped in pages.bin): E_IMAGE_CORRUPT naming epoch, pid and address', async () => {
    const { img, fx, d } = await startAndDump('rs_counter', 'corrupt', 0);
    const e0 = join(img, 'epoch-000000');
    const meta = readEpochMeta(e0);
    const run = processesOf(meta)[0]!.pages[2]!;
    flipByte(join(e0, 'pages.bin'), Number(run.offset) + 100);
    const err = await refused(img);
    expect(err.code).toBe('E_IMAGE_CORRUPT');
    expect(err.message).toContain('corrupted page: epoch 0');
    expect(err.message).toContain(`pid ${fx.pid}`);
    expect(err.message).toContain(`address 0x${Number(run.vaddr).toString(16)}`);
    expect(err.killed).toEqual([]); // refused before creating anything
    nothingRunning(d.pids, err);
  });

  it('a missing delta: E_IMAGE_CHAIN naming the missing epoch', async () => {
    const { img, fx, d } = await startAndDump('rs_counter', 'chain', 5);
    rmSync(join(img, 'epoch-000003'), { recursive: true });
    const err = await refused(img);
    expect(err.code).toBe('E_IMAGE_CHAIN');
    expect(err.message).toContain('epoch 3 is missing');
    expect(err.killed).toEqual([]);
    nothingRunning(d.pids, err);
    // epoch 2 is still whole: it is restorable, and passes
    const r = await restore({ imageDir: img, epoch: 2 });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    expect(r.epoch).toBe(2);
    expect(r.pids).toEqual([fx.pid]);
  });

  it('a delta from another image: E_IMAGE_CHAIN naming both image ids', async () => {
    const a = join(tmp('foreign-a'), 'image');
    const b = join(tmp('foreign-b'), 'image');
    const fa = await startFixture('rs_counter', tmp('fa'));
    const da = await dumpAndKill(fa.pid, a, 2);
    const fb = await startFixture('rs_counter', tmp('fb'));
    await dumpAndKill(fb.pid, b, 2);
    rmSync(join(a, 'epoch-000002'), { recursive: true });
    cpSync(join(b, 'epoch-000002'), join(a, 'epoch-000002'), { recursive: true });
    const err = await refused(a);
    expect(err.code).toBe('E_IMAGE_CHAIN');
    expect(err.message).toMatch(/belongs to image [0-9a-f]{32}.*image [0-9a-f]{32}/);
    nothingRunning(da.pids, err);
  });

  it('a library replaced behind a mapping: E_FILE_CHANGED naming the file', async () => {
    const dir = tmp('lib');
    const lib = join(dir, 'libcopy.so');
    copyFileSync('/usr/lib/x86_64-linux-gnu/libm.so.6', lib);
    const fx = await startFixture('rs_mapfile', dir, [join(process.cwd(), 'build/fixtures/rs_mapfile'), dir, lib]);
    await waitFor('ready', () => existsSync(join(dir, 'ready')));
    const img = join(tmp('lib-img'), 'image');
    const d = await dumpAndKill(fx.pid, img, 0);
    copyFileSync('/usr/lib/x86_64-linux-gnu/libz.so.1', lib); // another library, same path
    const err = await refused(img);
    expect(err.code).toBe('E_FILE_CHANGED');
    expect(err.message).toContain(lib);
    expect(err.message).toContain('changed since the checkpoint');
    expect(err.killed).toEqual([]);
    nothingRunning(d.pids, err);
  });

  it('a data file modified in place (same size) behind a mapping: E_FILE_CHANGED by content', async () => {
    const dir = tmp('data');
    const file = join(dir, 'table.bin');
    writeFileSync(file, Buffer.alloc(20000, 7));
    const fx = await startFixture('rs_mapfile', dir, [join(process.cwd(), 'build/fixtures/rs_mapfile'), dir, file]);
    await waitFor('ready', () => existsSync(join(dir, 'ready')));
    const img = join(tmp('data-img'), 'image');
    const d = await dumpAndKill(fx.pid, img, 0);
    flipByte(file, 12345);
    const err = await refused(img);
    expect(err.code).toBe('E_FILE_CHANGED');
    expect(err.message).toContain(`${file} changed since the checkpoint: content crc32`);
    nothingRunning(d.pids, err);
    // put it back: the restore goes through and the fixture passes
    flipByte(file, 12345);
    const r = await restore({ imageDir: img });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    writeFileSync(join(dir, 'go'), '');
    await waitFor('verdict', () => {
      try {
        statSync(join(dir, 'verdict'));
        return true;
      } catch {
        return false;
      }
    });
    expect(readFileSync(join(dir, 'verdict'), 'utf8').trim()).toBe('PASS');
  });

  it('a PID already taken (the original still runs): E_PID_TAKEN naming the pid and its holder', async () => {
    const ctl = tmp('taken');
    const img = join(tmp('taken-img'), 'image');
    const fx = await startFixture('rs_counter', ctl);
    const engine = EngineClient.start();
    onCleanup(() => engine.kill());
    await engine.attach(fx.pid, { trackDirty: true });
    await engine.checkpoint({ imageDir: img });
    await engine.close(); // detaches: the original keeps running with its pid
    const err = await refused(img);
    expect(err.code).toBe('E_PID_TAKEN');
    expect(err.message).toContain(`pid ${fx.pid} of the image is in use on this node (by "rs_counter")`);
    expect(err.killed).toEqual([]);
    expect(alive(fx.pid)).toBe(true); // the holder is untouched
    killPids([fx.pid]);
  });

  for (const phase of ['tree', 'rebuild']) {
    it(`a failure after the ${phase} phase kills everything the restore created`, async () => {
      const { img, d } = await startAndDump('rs_forktree', `mid-${phase}`, 0);
      const err = await refused(img, { UNDERSTUDY_RESTORE_FAIL_AFTER: phase });
      expect(err.code).toBe('E_RESTORE');
      expect(err.message).toContain(`UNDERSTUDY_RESTORE_FAIL_AFTER=${phase}`);
      // the reaper and the three processes had been created, and are gone
      expect(err.killed).toHaveLength(4);
      expect([...err.killed.slice(1)].sort()).toEqual([...d.pids].sort());
      await waitFor('everything to be gone', () => err.killed.every((p) => !alive(p)), 5000);
      nothingRunning(d.pids, err);
      // the pids are free again: a real restore now works
      const r = await restore({ imageDir: img });
      onCleanup(() => killPids([r.reaper, ...r.pids]));
      expect([...r.pids].sort()).toEqual([...d.pids].sort());
    });
  }

  // An app with its own PID namespace gets new host pids: its image's host
  // pids are the original's, still running here. The cleanup must kill what
  // the restore created, by the pids it got, and nothing else.
  it('a failure after the rebuild of an app with its own namespace kills the copy it created, never the running original', async () => {
    const ctl = tmp('mid-own-ns');
    const img = join(tmp('mid-own-ns-img'), 'image');
    const hostPid = await startInOwnNamespace('rs_forktree', ctl);
    await sleep(50); // (let the fork tree start)
    const engine = EngineClient.start();
    onCleanup(() => engine.kill());
    await engine.attach(hostPid, { trackDirty: true, includeChildren: true });
    await engine.checkpoint({ imageDir: img });
    const original = (await engine.status()).pids;
    await engine.close(); // detaches: the original keeps running with its pids
    expect(original).toHaveLength(3);
    const err = await refused(img, { UNDERSTUDY_RESTORE_FAIL_AFTER: 'rebuild' });
    expect(err.code).toBe('E_RESTORE');
    expect(err.message).toContain('UNDERSTUDY_RESTORE_FAIL_AFTER=rebuild');
    // the copy's root was pid 1 of its namespace (no reaper of its own): three processes, each named once
    expect(err.killed).toHaveLength(3);
    expect(new Set(err.killed).size).toBe(3);
    for (const p of err.killed) expect(original, `killed pid ${p} is one the restore created`).not.toContain(p);
    await waitFor('the copy to be gone', () => err.killed.every((p) => !alive(p)), 5000);
    for (const p of original) expect(alive(p), `original pid ${p} still runs`).toBe(true);
    expect(await verdict(ctl)).toBe('PASS');
  });

  for (const kind of ['pid 1 of its own namespace', 'in the host namespace, under a reaper'] as const) {
    it(`a restorer killed before it seized the root (${kind}) leaves nothing behind`, async () => {
      const ctl = tmp('die-early');
      const img = join(tmp('die-early-img'), 'image');
      const pid = kind.startsWith('pid 1') ? await startInOwnNamespace('rs_counter', ctl) : (await startFixture('rs_counter', ctl)).pid;
      await dumpAndKill(pid, img, 0);
      // the hook makes the restorer _exit(99) right before PTRACE_SEIZE of the root
      const r = spawnSync(nativeBinary('restore'), ['-D', img], {
        env: { ...process.env, UNDERSTUDY_RESTORE_DIE_BEFORE_SEIZE: '1' },
        encoding: 'utf8',
        timeout: 20_000,
      });
      expect(r.status).toBe(99);
      // the root (and the reaper) are copies of the restorer (same command line) in a new namespace
      const leftovers = (): number[] =>
        readdirSync('/proc')
          .filter((n) => /^\d+$/.test(n))
          .map(Number)
          .filter((n) => {
            try {
              return readFileSync(`/proc/${n}/cmdline`, 'utf8').split('\0').includes(img) && alive(n);
            } catch {
              return false;
            }
          });
      onCleanup(() => killPids(leftovers()));
      await waitFor('what it had started to be gone', () => leftovers().length === 0, 3000);
    });
  }

  it('an epoch that does not exist and a directory that is not an image are refused clearly', async () => {
    const empty = tmp('empty');
    await expect(restore({ imageDir: empty })).rejects.toMatchObject({ code: 'E_NOT_AN_IMAGE' });
    const { img } = await startAndDump('rs_counter', 'noepoch', 1);
    await expect(restore({ imageDir: img, epoch: 7 })).rejects.toMatchObject({ code: 'E_IMAGE_CHAIN' });
    expect(readdirSync(img).filter((n) => n.startsWith('epoch-'))).toHaveLength(2);
  });
});
