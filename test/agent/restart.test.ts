// An engine the protect loop restarts continues the chain: the engine is
// SIGKILLed between epochs, a new one attaches to the running app and writes
// the chain's next epoch in full (same image id, parent the newest written),
// then deltas; the image restores to the app of the last epoch. And a crashing
// engine is not restarted forever: the give-up is an E_ENGINE_DIED that says so,
// the app released and running. An epoch the dead engine put in place before
// its reply is taken from the directory; anything else beyond the chain is
// refused, not skipped over.
import { cpSync, existsSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ProtectLoop } from '../../src/agent/protect.js';
import { listEpochs, readEpochMeta, rewriteEpochMeta } from '../../src/image/store.js';
import { restore } from '../../src/native/restorer.js';
import * as rs from '../restore/helpers.js';
import { runCli } from '../helpers/cli.js';
import { onCleanup, procState, runCleanups, settledState, startFixture, tmp, waitFor } from '../engine/helpers.js';

/** Times the process went to sleep by itself (rs_counter sleeps 1 ms between rounds of counting). */
function sleeps(pid: number): number {
  return Number(/^voluntary_ctxt_switches:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

function protect(o: ConstructorParameters<typeof ProtectLoop>[0]): ProtectLoop {
  const loop = new ProtectLoop(o);
  onCleanup(() => void loop.stop().catch(() => undefined));
  return loop;
}

afterEach(runCleanups);
afterAll(async () => {
  await rs.runCleanups();
});

describe('an engine the protect loop restarts', () => {
  it('continues the chain after a SIGKILL between epochs: the next epoch full, same image; the image restores to the last epoch', async () => {
    const ctl = rs.tmp('restart');
    const img = join(rs.tmp('restart-img'), 'image');
    const fx = await rs.startFixture('rs_counter', ctl);
    const loop = protect({ pid: fx.pid, imageDir: img, graph: 'none', schedule: { intervalMs: 40 } });
    const restarted: { attempt: number; nextEpoch: number; enginePid: number; code: string }[] = [];
    loop.on('restarted', (r) => restarted.push({ attempt: r.attempt, nextEpoch: r.nextEpoch, enginePid: r.enginePid, code: r.error.code }));
    const failed: string[] = [];
    loop.on('failed', (e) => failed.push(e.code));
    await loop.start();
    await waitFor('three deltas', () => loop.epochs.length >= 4 || undefined, 10_000);
    const first = loop.enginePid!;
    process.kill(first, 'SIGKILL');
    await waitFor('a new engine', () => restarted.length >= 1 || undefined, 10_000);
    // the kernel released the app and the new engine only seized it: it runs (counts, sleeps 1 ms, again)
    expect(procState(fx.pid).state).not.toMatch(/^[tT]$/);
    const s0 = sleeps(fx.pid);
    await rs.sleep(200);
    expect(sleeps(fx.pid)).toBeGreaterThan(s0 + 20);
    const cont = restarted[0]!.nextEpoch;
    await waitFor('three epochs after the restart', () => (loop.epochs.at(-1)?.epoch ?? 0) >= cont + 3 || undefined, 10_000);
    expect(restarted).toEqual([{ attempt: 1, nextEpoch: cont, enginePid: loop.enginePid!, code: 'E_ENGINE_DIED' }]);
    expect(loop.enginePid).not.toBe(first);
    expect(failed).toEqual([]);
    expect(loop.state).toBe('running');
    // stop: the app killed (as a dump does) so that its pid is free for the restore
    await loop.stop({ app: 'kill' });
    await rs.waitFor('the app to be gone', () => !rs.exists(fx.pid));

    const epochs = loop.epochs;
    const last = epochs.at(-1)!.epoch;
    // no gap, each over the one before; only epoch 0 and the new engine's first are full
    expect(epochs.map((e) => e.epoch)).toEqual([...Array(last + 1).keys()]);
    expect(epochs.map((e) => e.parent)).toEqual([undefined, ...Array(last).keys()]);
    expect(epochs.filter((e) => e.full).map((e) => e.epoch)).toEqual([0, cont]);
    // on disk: the same chain, one image id
    const id = loop.chain.imageId!;
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(listEpochs(img).map((e) => e.epoch)).toEqual(epochs.map((e) => e.epoch));
    for (const e of epochs) expect(readEpochMeta(e.epochDir)).toMatchObject({ epoch: e.epoch, imageId: id, full: e.full });
    expect(readEpochMeta(epochs[cont]!.epochDir).parentEpoch).toBe(cont - 1);

    const r = await restore({ imageDir: img });
    rs.onCleanup(() => rs.killPids([r.reaper, ...r.pids]));
    expect(r.epoch).toBe(last);
    expect(r.imageId).toBe(id);
    expect(r.pids[0]).toBe(fx.pid);
    expect(await rs.verdict(ctl)).toBe('PASS');
  }, 60_000);

  it('gives up after 3 restarts in a row that wrote no epoch: E_ENGINE_DIED saying so, the app released and running', async () => {
    const fx = await startFixture({ mb: 2 });
    const img = join(tmp('img'), 'image');
    const loop = protect({ pid: fx.pid, imageDir: img, graph: 'none', schedule: { intervalMs: 5_000 } });
    const attempts: number[] = [];
    // every new engine dies before it writes an epoch
    loop.on('restarted', (r) => {
      attempts.push(r.attempt);
      process.kill(r.enginePid, 'SIGKILL');
    });
    await loop.start();
    process.kill(loop.enginePid!, 'SIGKILL');
    const end = await loop.ended;
    expect(attempts).toEqual([1, 2, 3]);
    expect(end).toMatchObject({ reason: 'failed', epochs: 1, error: { code: 'E_ENGINE_DIED' } });
    expect(end.error!.message).toMatch(
      /died 4 times in a row .* gave up \(the limit is 3\): the app is released and keeps running, the chain in .* ends at epoch 0/,
    );
    expect(loop.state).toBe('failed');
    await expect(loop.requestEpoch()).rejects.toMatchObject({ code: 'E_ENGINE_DIED' });
    // released by the kernel each time, and doing what it is told
    expect(procState(fx.pid).tracer).toBe(0);
    expect(await settledState(fx.pid)).toBe('S');
    expect(await fx.write(3, 1)).toHaveLength(3);
    expect(listEpochs(img).map((e) => e.epoch)).toEqual([0]);
  }, 60_000);

  it('an epoch asked for while the engine is dead goes to the new engine; a restart that writes an epoch resets the count', async () => {
    const fx = await startFixture({ mb: 2 });
    const img = join(tmp('img'), 'image');
    const loop = protect({ pid: fx.pid, imageDir: img, graph: 'none', maxEngineRestarts: 1 });
    await loop.start();
    for (let round = 1; round <= 2; round++) {
      const dead = loop.enginePid!;
      process.kill(dead, 'SIGKILL');
      await waitFor('a new engine', () => (loop.enginePid !== dead && loop.state === 'running') || undefined, 10_000);
      await fx.write(4, round);
      // one restart allowed in a row: the second kill is survived only because the first new engine wrote an epoch
      const e = await loop.requestEpoch();
      expect(e.record).toMatchObject({ epoch: round, parent: round - 1, full: true, trigger: 'request' });
      expect(e.result.imageId).toBe(loop.chain.imageId);
    }
    const d = await loop.requestEpoch();
    expect(d.record).toMatchObject({ epoch: 3, parent: 2, full: false });
    expect(d.record.pages).toBeLessThan(64);
    expect(await loop.stop()).toEqual({ reason: 'stopped', epochs: 4 });
    expect(procState(fx.pid).tracer).toBe(0);
    expect(await settledState(fx.pid)).toBe('S');
  }, 60_000);

  it('captures the dead engine had not written are lost; the new engine continues after the newest written, with no gap', async () => {
    const fx = await startFixture({ mb: 2 });
    const img = join(tmp('img'), 'image');
    // every write held 300 ms: epochs pile up in the engine's writer queue
    const loop = protect({ pid: fx.pid, imageDir: img, graph: 'none', schedule: { intervalMs: 20 }, debug: { writeDelayMs: 300 } });
    const lost: number[] = [];
    const released: number[] = [];
    loop.on('stage', (s) => {
      if (s.stage === 'lost') lost.push(s.epoch);
      if (s.stage === 'released') released.push(s.epoch);
    });
    const restarted: number[] = [];
    loop.on('restarted', (r) => restarted.push(r.nextEpoch));
    await loop.start();
    // epoch 1 being written, epoch 2 captured behind it
    await waitFor('epoch 2 captured', () => released.includes(2) || undefined, 10_000);
    expect(loop.epochs).toHaveLength(1);
    process.kill(loop.enginePid!, 'SIGKILL');
    await waitFor('a new engine', () => restarted.length > 0 || undefined, 10_000);
    await waitFor('epochs from the new engine', () => loop.epochs.length >= 4 || undefined, 20_000);
    // nothing after epoch 0 was written: epochs 1 and 2 (and any captured after them) are lost,
    // and the new engine writes epoch 1 again, in full, over epoch 0
    expect(lost.slice(0, 2)).toEqual([1, 2]);
    expect(restarted).toEqual([1]);
    expect(loop.epochs.slice(0, 4).map((e) => [e.epoch, e.parent, e.full])).toEqual([
      [0, undefined, true],
      [1, 0, true],
      [2, 1, false],
      [3, 2, false],
    ]);
    await loop.stop();
    expect(listEpochs(img).map((e) => e.epoch)).toEqual(loop.epochs.map((e) => e.epoch));
    for (const e of loop.epochs) expect(readEpochMeta(e.epochDir).imageId).toBe(loop.chain.imageId);
    expect(procState(fx.pid).tracer).toBe(0);
    expect(await settledState(fx.pid)).toBe('S');
  }, 60_000);

  it('understudy dump --incremental goes on past a killed engine to its last epoch; --no-restart-engine fails with the code', async () => {
    const fx = await startFixture({ mb: 2 });
    for (const restart of [true, false]) {
      const dir = join(tmp('img'), 'image');
      const run = runCli([
        'dump',
        '--pid',
        String(fx.pid),
        '-D',
        dir,
        '--epochs',
        '6',
        '--interval-ms',
        '100',
        '--leave-running',
        ...(restart ? [] : ['--no-restart-engine']),
      ]);
      await waitFor('epoch 2', () => existsSync(join(dir, 'epoch-000002')) || undefined, 20_000);
      // the dump's engine is the app's tracer
      const engine = procState(fx.pid).tracer;
      expect(engine).toBeGreaterThan(0);
      process.kill(engine, 'SIGKILL');
      const r = await run;
      if (restart) {
        expect(r.exitCode, r.stderr).toBe(0);
        const cont = Number(/engine \d+ continues the chain at epoch (\d+) \(full\)/.exec(r.stdout)?.[1]);
        expect(cont).toBeGreaterThanOrEqual(3);
        const metas = listEpochs(dir).map((e) => readEpochMeta(e.path));
        expect(metas.map((m) => m.epoch)).toEqual([0, 1, 2, 3, 4, 5, 6]);
        expect(metas.filter((m) => m.full).map((m) => m.epoch)).toEqual([0, cont]);
        expect(new Set(metas.map((m) => m.imageId)).size).toBe(1);
      } else {
        expect(r.exitCode).toBe(1);
        expect(r.stderr).toMatch(/checkpoint engine .* exited while protecting app .* keeps running/);
      }
      expect(procState(fx.pid).tracer).toBe(0);
      expect(await settledState(fx.pid)).toBe('S');
      expect(await fx.write(2, restart ? 1 : 2)).toHaveLength(2);
    }
  }, 60_000);

  it('an epoch on disk beyond the chain that no capture waits for is not skipped over: E_IMAGE_CHAIN, the app released', async () => {
    const fx = await startFixture({ mb: 2 });
    const img = join(tmp('img'), 'image');
    const loop = protect({ pid: fx.pid, imageDir: img, graph: 'none' });
    await loop.start();
    await loop.requestEpoch();
    // an epoch 2 nobody asked for
    cpSync(join(img, 'epoch-000001'), join(img, 'epoch-000002'), { recursive: true });
    const dead = loop.enginePid!;
    process.kill(dead, 'SIGKILL');
    await waitFor('a new engine', () => (loop.enginePid !== dead && loop.state === 'running') || undefined, 10_000);
    await expect(loop.requestEpoch()).rejects.toMatchObject({
      code: 'E_IMAGE_CHAIN',
      message: expect.stringMatching(/parent epoch 1 is not the newest epoch in .* which is 2/),
    });
    expect(await loop.ended).toMatchObject({ reason: 'failed', epochs: 2, error: { code: 'E_IMAGE_CHAIN' } });
    expect(procState(fx.pid).tracer).toBe(0);
    expect(await settledState(fx.pid)).toBe('S');
    expect(await fx.write(2, 3)).toHaveLength(2);
  }, 60_000);

  it('an epoch the dead engine put in place before its reply is taken from the image directory; the chain goes on after it', async () => {
    const fx = await startFixture({ mb: 2 });
    const img = join(tmp('img'), 'image');
    // each write held 500 ms: time to put epoch 2 in place as the engine would have, and kill it
    const loop = protect({ pid: fx.pid, imageDir: img, graph: 'none', debug: { writeDelayMs: 500 } });
    const stages: string[] = [];
    let released: () => void = () => {};
    const wasReleased = new Promise<void>((res) => (released = res));
    loop.on('stage', (s) => {
      stages.push(`${s.stage}-${s.epoch}`);
      if (s.epoch === 2 && s.stage === 'released') released();
    });
    await loop.start();
    await fx.write(4, 1);
    await loop.requestEpoch();
    await fx.write(4, 2);
    const e2p = loop.requestEpoch();
    await wasReleased;
    // epoch 1's directory, named and described as epoch 2 over epoch 1, renamed into place whole
    const e1dir = join(img, 'epoch-000001');
    const staged = join(img, '.staged-2');
    cpSync(e1dir, staged, { recursive: true });
    rewriteEpochMeta(staged, (m) => {
      m.epoch = 2;
      m.parentEpoch = 1;
    });
    renameSync(staged, join(img, 'epoch-000002'));
    const dead = loop.enginePid!;
    process.kill(dead, 'SIGKILL');
    const e2 = await e2p;
    expect(e2.record).toMatchObject({ epoch: 2, parent: 1, full: false, trigger: 'request', epochDir: join(img, 'epoch-000002') });
    expect(e2.record.bytes).toBe(Number(readEpochMeta(e1dir).pagesBytes));
    expect(e2.record.pages).toBe(e2.record.bytes / 4096);
    expect(e2.record.pauseNs).toBeGreaterThan(0);
    // the capture's time, not the recovery's: before the kill
    expect(e2.record.barrierAtNs).toBeGreaterThan(0);
    expect(e2.record.barrierAtNs).toBeLessThan(Number(process.hrtime.bigint()));
    expect(e2.result.imageId).toBe(loop.chain.imageId);
    expect(stages).toContain('recovered-2');
    expect(stages).not.toContain('lost-2');
    await waitFor('a new engine', () => (loop.enginePid !== dead && loop.state === 'running') || undefined, 10_000);
    const e3 = await loop.requestEpoch();
    expect(e3.record).toMatchObject({ epoch: 3, parent: 2, full: true });
    expect(await loop.stop()).toEqual({ reason: 'stopped', epochs: 4 });
    expect(listEpochs(img).map((e) => e.epoch)).toEqual([0, 1, 2, 3]);
    expect(procState(fx.pid).tracer).toBe(0);
    expect(await settledState(fx.pid)).toBe('S');
  }, 60_000);

  it('what stands where the unanswered epoch should be but is not it (another epoch, another parent) fails the loop with E_IMAGE_CHAIN', async () => {
    const fx = await startFixture({ mb: 2 });
    const img = join(tmp('img'), 'image');
    const loop = protect({ pid: fx.pid, imageDir: img, graph: 'none', debug: { writeDelayMs: 500 } });
    let released: () => void = () => {};
    const wasReleased = new Promise<void>((res) => (released = res));
    loop.on('stage', (s) => s.epoch === 2 && s.stage === 'released' && released());
    await loop.start();
    await loop.requestEpoch();
    const e2p = loop.requestEpoch();
    await wasReleased;
    // epoch 1's directory under epoch 2's name, its meta.pb unchanged (epoch 1 over epoch 0)
    const staged = join(img, '.staged-2');
    cpSync(join(img, 'epoch-000001'), staged, { recursive: true });
    renameSync(staged, join(img, 'epoch-000002'));
    process.kill(loop.enginePid!, 'SIGKILL');
    await expect(e2p).rejects.toMatchObject({
      code: 'E_IMAGE_CHAIN',
      message: expect.stringMatching(/epoch-000002 is epoch 1 of image [0-9a-f]{32} over epoch 0, not epoch 2 of image [0-9a-f]{32} over epoch 1/),
    });
    expect(await loop.ended).toMatchObject({ reason: 'failed', epochs: 2, error: { code: 'E_IMAGE_CHAIN' } });
    expect(procState(fx.pid).tracer).toBe(0);
    expect(await settledState(fx.pid)).toBe('S');
  }, 60_000);

  it("with a live graph the tracer outlives the engine: the new engine's full epoch still comes with the dirty set since the last barrier", async () => {
    const fx = await startFixture({ mb: 2 });
    const loop = protect({ pid: fx.pid, imageDir: join(tmp('img'), 'image'), graph: 'live' });
    await loop.start();
    const tracer = loop.tracerPid!;
    const dead = loop.enginePid!;
    process.kill(dead, 'SIGKILL');
    await waitFor('a new engine', () => (loop.enginePid !== dead && loop.state === 'running') || undefined, 10_000);
    // command 0: pages of the region written, done-0 written and renamed, after barrier 0
    await fx.write(6, 1);
    const e1 = await loop.requestEpoch();
    expect(e1.record).toMatchObject({ epoch: 1, parent: 0, full: true });
    expect(loop.tracerPid).toBe(tracer);
    expect(e1.dirty).toMatchObject({ since: 0, epoch: 1 });
    expect(e1.dirty!.paths.some((p) => p.op === 'rename' && p.path2?.endsWith('/done-0') === true)).toBe(true);
    // (its memory regions come from write faults, and no page was write-protected between the
    // old engine's death and the new one's first barrier: the epoch is full, the set may lack them)
    // and the next delta only what came after barrier 1
    await fx.write(3, 2);
    const e2 = await loop.requestEpoch();
    expect(e2.record).toMatchObject({ epoch: 2, parent: 1, full: false });
    expect(e2.dirty!.paths.some((p) => p.path2?.endsWith('/done-0') === true)).toBe(false);
    expect(e2.dirty!.paths.some((p) => p.op === 'rename' && p.path2?.endsWith('/done-1') === true)).toBe(true);
    await loop.stop();
  }, 60_000);

  it('a stop while the new engine attaches waits for it, then detaches it: nothing left behind, the app running untraced', async () => {
    const fx = await startFixture({ mb: 2 });
    const loop = protect({ pid: fx.pid, imageDir: join(tmp('img'), 'image'), graph: 'none' });
    await loop.start();
    const dead = loop.enginePid!;
    process.kill(dead, 'SIGKILL');
    // the new engine is started; its attach is under way
    const fresh = await waitFor('a new engine', () => (loop.enginePid !== dead ? loop.enginePid : undefined), 10_000);
    expect(await loop.stop()).toEqual({ reason: 'stopped', epochs: 1 });
    expect(existsSync(`/proc/${dead}`)).toBe(false);
    await waitFor('the new engine to exit', () => !existsSync(`/proc/${fresh}`) || undefined, 10_000);
    expect(procState(fx.pid).tracer).toBe(0);
    expect(await settledState(fx.pid)).toBe('S');
    expect(await fx.write(2, 1)).toHaveLength(2);
  }, 60_000);
});
