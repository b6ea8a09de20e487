// Restore rules beyond the per-fixture round trips (those are in
// fixtures-full, fixtures-deltas and fixtures-node2): PID namespaces,
// terminals, a restored app checkpointed again, compacted chains, processes
// and threads born in the middle of a chain.
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { EngineClient } from '../../src/native/engine.js';
import { compact, processesOf, readEpochMeta } from '../../src/image/store.js';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { restore } from '../../src/native/restorer.js';
import { TestCluster } from '../helpers/nodes.js';
import { buildDir } from '../../src/util/paths.js';
import {
  alive,
  dumpAndKill,
  lateForkChain,
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

/** The ids of pid's threads and its descendants' threads as its PID namespace sees them, sorted. */
function nsIds(pid: number): string[] {
  const out: string[] = [];
  const walk = (p: number): void => {
    for (const t of readdirSync(`/proc/${p}/task`)) {
      const st = readFileSync(`/proc/${p}/task/${t}/status`, 'utf8');
      out.push(`${st.match(/^NSpid:.*\s(\d+)$/m)![1]}/${st.match(/^Tgid:\s+(\d+)/m)![1] === t ? 'leader' : 'thread'}`);
    }
    for (const t of readdirSync(`/proc/${p}/task`))
      for (const c of readFileSync(`/proc/${p}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)) walk(Number(c));
  };
  walk(pid);
  return out.sort();
}

describe('PID namespace rules', () => {
  it('an app that is pid 1 of its own namespace comes back as pid 1 of a new one, without a reaper', async () => {
    const ctl = tmp('init');
    const hostPid = await startInOwnNamespace('rs_counter', ctl);
    const img = join(tmp('init-img'), 'image');
    await dumpAndKill(hostPid, img, 3);
    const r = await restore({ imageDir: img });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    expect(r.nsPid1).toBe('root');
    expect(r.pids).toHaveLength(1);
    // the app's root is the namespace's pid 1; its host pid is whatever this node gave
    expect(r.reaper).toBe(r.pids[0]);
    expect(readFileSync(`/proc/${r.pids[0]}/status`, 'utf8')).toMatch(new RegExp(`NSpid:\\s+${r.pids[0]}\\s+1\\n`));
    expect(await verdict(ctl)).toBe('PASS');
  });

  it('rs_timers as pid 1 of its own namespace: a SIGEV_THREAD_ID timer aims at its namespace tid again', async () => {
    const ctl = tmp('init-timers');
    const hostPid = await startInOwnNamespace('rs_timers', ctl);
    const img = join(tmp('init-timers-img'), 'image');
    await dumpAndKill(hostPid, img, 3);
    const meta = readEpochMeta(join(img, 'epoch-000003'));
    const d = processesOf(meta)[0]!.posixTimers.find((t) => t.id === 3)!;
    // the host tid of the target and its tid inside the namespace (1)
    expect({ target: d.targetTid, ns: d.nsTargetTid }).toEqual({ target: hostPid, ns: 1 });
    const r = await restore({ imageDir: img });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    expect(r.nsPid1).toBe('root');
    expect(await verdict(ctl)).toBe('PASS');
  });

  // The failover case: the host pids of an app with a namespace of its own are
  // still held (here by the original itself) where it is restored.
  for (const name of ['rs_forktree', 'rs_threads', 'rs_locks']) {
    it(`${name} in its own namespace: restored on node 2 while the original still runs, same ids inside`, async () => {
      const scratch = tmp(`${name}-own-ns`);
      const dataDir = join(scratch, 'data');
      mkdirSync(dataDir);
      const nodes = new TestCluster(dataDir, join(scratch, 'roots'));
      onCleanup(async () => {
        await nodes.destroy();
      });
      const node = await nodes.addNode();
      const ctl = join(dataDir, 'app');
      mkdirSync(ctl);
      const hostPid = await startInOwnNamespace(name, ctl);
      await sleep(50); // (let the fork tree or the threads start)
      const before = nsIds(hostPid);
      expect(before.length).toBeGreaterThan(1);
      const img = join(scratch, 'image');
      const engine = EngineClient.start();
      onCleanup(() => engine.kill());
      await engine.attach(hostPid, { trackDirty: true, includeChildren: true });
      for (let i = 0; i < 3; i++) await engine.checkpoint({ imageDir: img });
      const original = (await engine.status()).pids;
      await engine.detach();
      await engine.close();
      cpSync(dataDir, node.dataRoot, { recursive: true, preserveTimestamps: true });
      const r = await restore({ imageDir: img, wrap: (argv) => nodes.wrap(node, argv) });
      onCleanup(() => killPids([r.reaper, ...r.pids]));
      expect(r.nsPid1).toBe('root');
      // both run: the copy has other host pids, the same ids inside its namespace
      for (const p of original) expect(alive(p), `original pid ${p} still runs`).toBe(true);
      for (const p of r.pids) expect(original, `restored pid ${p} is a new host pid`).not.toContain(p);
      expect(nsIds(r.pids[0]!)).toEqual(before);
      expect(readlinkSync(`/proc/${r.pids[0]}/ns/net`)).not.toBe(readlinkSync('/proc/self/ns/net'));
      expect(await verdict(join(node.dataRoot, 'app'))).toBe('PASS');
      expect(existsSync(join(ctl, 'verdict'))).toBe(false);
      // and the original, told to go in its own folder, passes too: untouched
      expect(await verdict(ctl)).toBe('PASS');
    });
  }
});

/** rs_counter under script(1), which gives it a pseudo-terminal as fds 0, 1, 2; its pid (killed at cleanup). */
async function startOnTerminal(ctl: string): Promise<number> {
  await startFixture('script', ctl, ['script', '-qfc', `${resolve(buildDir, 'fixtures', 'rs_counter')} ${ctl}`, '/dev/null']);
  await waitFor('the fixture to be ready', () => existsSync(join(ctl, 'ready')));
  const pid = Number(readFileSync(join(ctl, 'ready'), 'utf8').trim());
  onCleanup(() => killPids([pid]));
  return pid;
}

describe('terminals', () => {
  it('a terminal the app had open becomes /dev/null (--tty null, the default), same fd numbers and access mode', async () => {
    const ctl = tmp('tty');
    const pid = await startOnTerminal(ctl);
    expect(readlinkSync(`/proc/${pid}/fd/1`)).toMatch(/^\/dev\/pts\/\d+$/);
    const img = join(tmp('tty-img'), 'image');
    await dumpAndKill(pid, img, 0);
    const r = await restore({ imageDir: img, tty: 'null' });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    for (const fd of [0, 1, 2]) {
      expect(readlinkSync(`/proc/${pid}/fd/${fd}`)).toBe('/dev/null');
      expect(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8')).toMatch(/flags:\s+0*[0-7]*2\n/); // O_RDWR, as the terminal was
    }
    expect(await verdict(ctl)).toBe('PASS');
  });
});

describe('terminals, inherited', () => {
  it('--tty inherit gives the app the terminal the restorer runs on', async () => {
    const ctl = tmp('ttyi');
    const pid = await startOnTerminal(ctl);
    const img = join(tmp('ttyi-img'), 'image');
    await dumpAndKill(pid, img, 0);
    // the restorer itself on a pseudo-terminal (script), asked to pass it on
    const r = await restore({
      imageDir: img,
      tty: 'inherit',
      wrap: (argv) => ['script', '-qfec', argv.map((a) => `'${a}'`).join(' '), '/dev/null'],
    });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    // (the pty goes away with script(1) once the restorer has exited)
    expect(readlinkSync(`/proc/${pid}/fd/0`)).toMatch(/^\/dev\/pts\/\d+( \(deleted\))?$/);
    expect(await verdict(ctl)).toBe('PASS');
  });
});

describe('a restored app is an ordinary process', () => {
  it('can be checkpointed again (dirty tracking included) and restored a second time', async () => {
    const ctl = tmp('again');
    const fx = await startFixture('rs_malloc', ctl);
    const img1 = join(tmp('again-img1'), 'image');
    await dumpAndKill(fx.pid, img1, 3);
    const r1 = await restore({ imageDir: img1 });
    onCleanup(() => killPids([r1.reaper, ...r1.pids]));
    // no userfaultfd registration of the restore is left: the engine can track it again
    const img2 = join(tmp('again-img2'), 'image');
    const d2 = await dumpAndKill(fx.pid, img2, 5);
    expect(d2.pids).toEqual([fx.pid]);
    const r2 = await restore({ imageDir: img2 });
    onCleanup(() => killPids([r2.reaper, ...r2.pids]));
    expect(r2.pids).toEqual([fx.pid]);
    expect(await verdict(ctl)).toBe('PASS');
  });
});

describe('compacted chains', () => {
  it('restores from a base-N folded by `compact` (epochs below it pruned) plus the deltas after it', async () => {
    const { ctl, img, fx } = await startAndDump('rs_malloc', 'compact', 6);
    const c = compact(img, 3, { prune: true });
    expect(c.base).toContain('base-000003');
    expect(existsSync(join(img, 'epoch-000000'))).toBe(false);
    const r = await restore({ imageDir: img });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    expect(r.epoch).toBe(6);
    expect(r.pids).toEqual([fx.pid]);
    expect(await verdict(ctl)).toBe('PASS');
  });
});

describe('processes and threads born in the middle of a chain', () => {
  it('a child forked and a thread started at epoch 5 of 20 come back with their ids', async () => {
    const ctl = tmp('late');
    const img = join(tmp('late-img'), 'image');
    const { fx, child } = await lateForkChain(ctl, img);
    const m = readEpochMeta(join(img, 'epoch-000006'));
    expect(processesOf(m).find((p) => p.pid === child)?.newProcess).toBe(true);
    const r = await restore({ imageDir: img });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    expect([...r.pids].sort()).toEqual([fx.pid, child].sort());
    expect(r.threads).toBe(3);
    expect(await verdict(ctl)).toBe('PASS');
  });
});
