// Pipes, eventfds, epoll and shared open file descriptions across
// checkpoint -> kill -> restore: the rs_pipes fixture (zdtm pattern, two
// processes), node (whose libuv and V8 hold self-pipes, eventfds and epoll
// instances) continuing its output in sequence, and the refusals: a pipe to a
// process outside the app, an epoll interest that cannot be rebuilt.
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { EngineClient } from '../../src/native/engine.js';
import { understudy } from '../../src/gen/proto.js';
import { compact, processesOf, readEpochMeta, rewriteEpochMeta } from '../../src/image/store.js';
import { restore } from '../../src/native/restorer.js';
import { buildDir, packageRoot } from '../../src/util/paths.js';
import { TestCluster } from '../helpers/nodes.js';
import {
  alive,
  cutToCheckpoint,
  dumpAndKill,
  epochDir,
  killPids,
  onCleanup,
  python,
  runCleanups,
  startAndDump,
  startFixture,
  tmp,
  verdict,
  waitFor,
} from './helpers.js';

afterEach(runCleanups);

const Kind = understudy.v1.Fd.Kind;
const big = (v: unknown): bigint => BigInt(String(v ?? 0));

describe('pipes, eventfds, epoll, shared descriptions (rs_pipes)', () => {
  // (fixtures.test.ts runs rs_pipes from a full image, 20 deltas and on a second node too)
  for (const deltas of [20]) {
    it(`epoch 0 + ${deltas} deltas -> kill -> restore -> PASS, the last epoch holding what the fixture set up`, async () => {
      const { ctl, img, fx, d } = await startAndDump('rs_pipes', 'pipes', deltas);
      expect(d.pids).toHaveLength(2);
      const child = d.pids.find((p) => p !== fx.pid)!;

      const m = readEpochMeta(epochDir(img, d.lastEpoch));
      const procs = processesOf(m);
      const parent = procs.find((p) => p.pid === fx.pid)!;
      const kid = procs.find((p) => p.pid === child)!;
      const pipes = parent.fds.filter((f) => f.kind === Kind.PIPE);
      // the unread bytes, recorded once per pipe: self-pipe, full pipe, closed pipe, child->parent
      const unread = pipes
        .filter((f) => f.pipe?.hasState && !f.pipe.writeEnd)
        .map((f) => f.pipe!.data!.length)
        .sort((a, b) => a - b);
      expect(unread).toEqual([0, 123, 3000, 4096, 100000]);
      expect(pipes.find((f) => f.pipe?.data?.length === 100000)!.pipe!.size).toBe(256 * 1024);
      expect(pipes.find((f) => f.pipe?.data?.length === 4096)!.pipe!.size).toBe(4096);
      // the parent->child pipe's 5000 bytes are recorded with the child's read end
      expect(kid.fds.find((f) => f.kind === Kind.PIPE && f.pipe?.hasState)!.pipe!.data!.length).toBe(5000);
      const evs = parent.fds.filter((f) => f.kind === Kind.EVENTFD).map((f) => [Number(f.eventfd!.count), f.eventfd!.semaphore]);
      expect(evs).toEqual([
        [42, false],
        [3, true],
      ]);
      const ep = parent.fds.find((f) => f.kind === Kind.EPOLL)!;
      expect(ep.epoll!.targets!.map((t) => big(t.data).toString(16)).sort()).toEqual(['1111', '2222', '3333', '4444', 'deadbeef00000001']);
      // one description: fd 12, its dup and fd 40 in the parent, and the child's inherited copies
      const shared = parent.fds.find((f) => f.fd === 40)!;
      const id = big(shared.ofdId);
      expect(id >> 32n).toBe(BigInt(fx.pid));
      expect(parent.fds.filter((f) => big(f.ofdId) === id)).toHaveLength(3);
      expect(big(kid.fds.find((f) => f.fd === 40)!.ofdId)).toBe(id);
      expect(big(kid.fds.find((f) => f.kind === Kind.EPOLL)!.ofdId)).toBe(big(ep.ofdId));

      const r = await restore({ imageDir: img });
      onCleanup(() => killPids([r.reaper, ...r.pids]));
      expect([...r.pids].sort()).toEqual([...d.pids].sort());
      // the same objects at the same numbers, one epoll shared by both processes
      for (const pid of r.pids) {
        const want = procs.find((p) => p.pid === pid)!;
        for (const f of want.fds) {
          const link = readlinkSync(`/proc/${pid}/fd/${f.fd}`);
          if (f.kind === Kind.PIPE) expect(link, `pid ${pid} fd ${f.fd}`).toMatch(/^pipe:\[\d+\]$/);
          else if (f.kind === Kind.EVENTFD) expect(link).toBe('anon_inode:[eventfd]');
          else if (f.kind === Kind.EPOLL) expect(link).toBe('anon_inode:[eventpoll]');
        }
      }
      expect(readFileSync(`/proc/${fx.pid}/fdinfo/${ep.fd}`, 'utf8')).toMatch(/tfd:\s+\d+ events:\s+80000019 data:\s+deadbeef00000001/);
      expect(await verdict(ctl), 'rs_pipes verdict').toBe('PASS');
      await waitFor('the restored app to exit', () => r.pids.every((p) => !alive(p)));
    });
  }
});

describe('a compacted chain keeps pipes, counters and 64-bit epoll data exact', () => {
  it('rs_pipes: base-2 (pruned) + 2 deltas -> restore -> PASS', async () => {
    const { ctl, img, fx } = await startAndDump('rs_pipes', 'pipes-compact', 4);
    compact(img, 2, { prune: true });
    expect(existsSync(epochDir(img, 0))).toBe(false);
    const base = processesOf(readEpochMeta(join(img, 'base-000002')));
    const ep = base.find((p) => p.pid === fx.pid)!.fds.find((f) => f.kind === Kind.EPOLL)!;
    expect(ep.epoll!.targets!.map((t) => big(t.data).toString(16))).toContain('deadbeef00000001');
    const r = await restore({ imageDir: img });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    expect(r.epoch).toBe(4);
    expect(await verdict(ctl)).toBe('PASS');
  });
});

describe('an image whose fd records do not hold together is refused before any process exists', () => {
  it('an epoll watching an fd its process lacks; a pipe fd without its pipe record', async () => {
    const { img, fx, d } = await startAndDump('rs_pipes', 'pipes-bad', 0);
    const ep0 = epochDir(img, 0);
    const orig = readFileSync(join(ep0, 'meta.pb'));
    let epfd = 0;
    rewriteEpochMeta(ep0, (m) => {
      const ep = processesOf(m)
        .find((p) => p.pid === fx.pid)!
        .fds.find((f) => f.kind === Kind.EPOLL)!;
      epfd = ep.fd ?? 0;
      ep.epoll!.targets![0]!.tfd = 999;
    });
    await expect(restore({ imageDir: img })).rejects.toMatchObject({
      code: 'E_IMAGE_CORRUPT',
      message: expect.stringContaining(`pid ${fx.pid}: epoll fd ${epfd} watches fd 999, which the process does not have`),
      killed: [],
    });
    writeFileSync(join(ep0, 'meta.pb'), orig);
    let pfd = 0;
    rewriteEpochMeta(ep0, (m) => {
      const f = processesOf(m)
        .find((p) => p.pid === fx.pid)!
        .fds.find((x) => x.kind === Kind.PIPE)!;
      pfd = f.fd ?? 0;
      f.pipe = null;
    });
    await expect(restore({ imageDir: img })).rejects.toMatchObject({
      code: 'E_IMAGE_CORRUPT',
      message: expect.stringContaining(`pid ${fx.pid} fd ${pfd} is a pipe without its pipe record`),
    });
    for (const p of d.pids) expect(alive(p), `pid ${p} was not created`).toBe(false);
  });
});

const fixtureNode = join(packageRoot, 'test', 'fixtures', 'rs_node.cjs');

/** node with only its stdio (fds the test runner leaks are closed first, by python, before node starts) */
function nodeArgv(out: string): string[] {
  return [
    'env',
    'UV_USE_IO_URING=0',
    '/usr/bin/python3',
    '-c',
    'import os,sys; os.closerange(3, 65536); os.execv(sys.argv[1], sys.argv[1:])',
    process.execPath,
    fixtureNode,
    out,
  ];
}

function checkSequence(lines: string[]): void {
  let acc = 0;
  let lastTicks = 0;
  for (let i = 0; i < lines.length; i++) {
    const [idx, val, ticks] = lines[i]!.split(' ').map(Number);
    expect(idx, `line ${i}: ${lines[i]}`).toBe(i);
    for (let k = 0; k < 2000; k++) acc = (acc * 31 + k) % 1000000007;
    expect(val, `line ${i}: value follows from the previous line`).toBe(acc);
    expect(ticks!, `line ${i}: the setTimeout chain does not go back`).toBeGreaterThanOrEqual(lastTicks);
    lastTicks = ticks!;
  }
}

describe('node: a compute loop with timers continues its output in sequence', () => {
  for (const deltas of [0, 20]) {
    it(`${deltas ? 'epoch 0 + 20 deltas' : 'full checkpoint'} -> kill -> restore`, async () => {
      const ctl = tmp('node');
      const out = join(ctl, 'out');
      const fx = await startFixture('node', ctl, nodeArgv(out));
      await waitFor('node output', () => existsSync(out) && readFileSync(out, 'utf8').split('\n').length > 10);
      const img = join(tmp('node-img'), 'image');
      const d = await dumpAndKill(fx.pid, img, deltas, 20);
      expect(d.pids).toEqual([fx.pid]);
      const meta = readEpochMeta(epochDir(img, d.lastEpoch));
      const p = processesOf(meta)[0]!;
      expect(p.threads.length, 'node is multi-threaded').toBeGreaterThan(1);
      const kinds = new Set(p.fds.map((f) => f.kind));
      for (const k of [Kind.PIPE, Kind.EVENTFD, Kind.EPOLL]) expect(kinds.has(k), `node holds a ${Kind[k]}`).toBe(true);
      const before = cutToCheckpoint(p, out);
      const r = await restore({ imageDir: img });
      onCleanup(() => killPids([r.reaper, ...r.pids]));
      expect(r.pids).toEqual([fx.pid]);
      await waitFor('node to write after the restore', () => readFileSync(out, 'utf8').trim().split('\n').length >= before.length + 20);
      expect(alive(fx.pid)).toBe(true);
      killPids([r.reaper, ...r.pids]);
      const lines = readFileSync(out, 'utf8').trim().split('\n');
      checkSequence(lines);
      // the setTimeout chain runs on after the restore too
      const t0 = Number(before[before.length - 1]!.split(' ')[2]);
      expect(Number(lines[lines.length - 1]!.split(' ')[2])).toBeGreaterThan(t0);
    });
  }
});

describe('node restored twice', () => {
  it('a restored node is checkpointed again (its rebuilt pipes, eventfds, epolls) and restored again, its output still in sequence', async () => {
    const ctl = tmp('node2x');
    const out = join(ctl, 'out');
    const fx = await startFixture('node', ctl, nodeArgv(out));
    await waitFor('node output', () => existsSync(out) && readFileSync(out, 'utf8').split('\n').length > 10);
    let lines = 0;
    for (const round of [1, 2]) {
      const img = join(tmp(`node2x-img${round}`), 'image');
      const d = await dumpAndKill(fx.pid, img, 3, 20);
      expect(d.pids).toEqual([fx.pid]);
      const p = processesOf(readEpochMeta(epochDir(img, d.lastEpoch)))[0]!;
      lines = cutToCheckpoint(p, out).length;
      const r = await restore({ imageDir: img });
      onCleanup(() => killPids([r.reaper, ...r.pids]));
      await waitFor(`node to write after restore ${round}`, () => readFileSync(out, 'utf8').trim().split('\n').length >= lines + 10);
    }
    killPids([fx.pid]);
    checkSequence(readFileSync(out, 'utf8').trim().split('\n'));
  });
});

describe('node on a second node (own network namespace, own copy of the data folder)', () => {
  let cluster: TestCluster | undefined;
  afterAll(async () => {
    await cluster?.destroy();
  });

  it("epoch 0 + 20 deltas restored on node 2: the output continues in node 2's copy", async () => {
    const scratch = tmp('node-nodes');
    const dataDir = join(scratch, 'data');
    mkdirSync(dataDir);
    const nodes = new TestCluster(dataDir, join(scratch, 'roots'));
    cluster = nodes;
    const node2 = await nodes.addNode();
    const ctl = join(dataDir, 'app');
    mkdirSync(ctl);
    const out = join(ctl, 'out');
    const fx = await startFixture('node', ctl, nodeArgv(out));
    await waitFor('node output', () => existsSync(out) && readFileSync(out, 'utf8').split('\n').length > 10);
    const img = join(scratch, 'image');
    const d = await dumpAndKill(fx.pid, img, 20, 20);
    const p = processesOf(readEpochMeta(epochDir(img, d.lastEpoch)))[0]!;
    // node 2's copy of the data folder, as replicated up to the checkpoint
    cpSync(dataDir, node2.dataRoot, { recursive: true, preserveTimestamps: true });
    const out2 = join(node2.dataRoot, 'app', 'out');
    const before = cutToCheckpoint(p, out2, out);
    const r = await restore({
      imageDir: img,
      wrap: (argv) => nodes.wrap(node2, argv),
    });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    expect(readlinkSync(`/proc/${fx.pid}/ns/net`)).not.toBe(readlinkSync('/proc/self/ns/net'));
    await waitFor('node to write on node 2', () => readFileSync(out2, 'utf8').trim().split('\n').length >= before.length + 20);
    killPids([r.reaper, ...r.pids]);
    checkSequence(readFileSync(out2, 'utf8').trim().split('\n'));
  });
});

describe('refused at attach', () => {
  it('a pipe whose other end is held by a process outside the app, naming pid, fd and the holder', async () => {
    // a shell pipeline: the fixture's stdout is a pipe to cat, which is not part of the app
    const ctl = tmp('outside');
    const sh = spawn('sh', ['-c', '"$0" "$1" | cat >/dev/null', resolve(buildDir, 'fixtures', 'rs_counter'), ctl], {
      stdio: 'ignore',
      detached: true,
    });
    onCleanup(() => {
      try {
        process.kill(-sh.pid!, 'SIGKILL');
      } catch {
        // gone
      }
    });
    await waitFor('rs_counter ready', () => existsSync(join(ctl, 'ready')));
    const pid = Number(readFileSync(join(ctl, 'ready'), 'utf8').trim());
    expect(readlinkSync(`/proc/${pid}/fd/1`)).toMatch(/^pipe:/);
    const engine = EngineClient.start();
    onCleanup(() => engine.kill());
    try {
      await expect(engine.attach(pid, { trackDirty: true, includeChildren: true })).rejects.toMatchObject({
        code: 'E_UNSUPPORTED',
        message: expect.stringMatching(
          new RegExp(`pid ${pid} fd 1 is the write end of pipe:\\[\\d+\\] whose read end is held outside the app by pid \\d+ \\(cat\\) fd 0`),
        ),
      });
    } finally {
      await engine.close();
    }
    // refused, so untouched: running, not traced
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(/TracerPid:\s+0\n/);
    expect(alive(pid)).toBe(true);
  });

  it('a pipe both ends of which are in the app, also held by a process outside it', async () => {
    // python holds both ends; its child (not part of the app: includeChildren false) holds the read end too
    const code =
      'import os,subprocess,time\n' +
      'os.closerange(3, 65536)\n' +
      'r,w=os.pipe()\n' +
      'c=subprocess.Popen(["sleep","1000"], pass_fds=[r])\n' +
      'open("ready","w").write(str(c.pid))\n' +
      'time.sleep(1000)\n';
    const ctl = tmp('shared-outside');
    const pid = python(code, ctl);
    await waitFor('python ready', () => existsSync(join(ctl, 'ready')) && readFileSync(join(ctl, 'ready'), 'utf8').length > 0);
    const sleeper = Number(readFileSync(join(ctl, 'ready'), 'utf8'));
    const engine = EngineClient.start();
    onCleanup(() => engine.kill());
    try {
      await expect(engine.attach(pid, { trackDirty: true, includeChildren: false })).rejects.toMatchObject({
        code: 'E_UNSUPPORTED',
        message: expect.stringMatching(new RegExp(`pid ${pid} fd \\d+ is pipe:\\[\\d+\\], which pid ${sleeper} \\(sleep\\) outside the app also holds`)),
      });
    } finally {
      await engine.close();
    }
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(/TracerPid:\s+0\n/);
  });

  it('a unix socket is still refused, naming the process at its other end', async () => {
    // node's stdio 'pipe' is a socketpair: the other end is this test process
    const p = spawn('sleep', ['1000'], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
    const pid = p.pid!;
    onCleanup(() => killPids([pid]));
    await waitFor('sleep started', () => existsSync(`/proc/${pid}/fd/0`) && readlinkSync(`/proc/${pid}/fd/0`).startsWith('socket:'));
    const engine = EngineClient.start();
    onCleanup(() => engine.kill());
    try {
      await expect(engine.attach(pid, { trackDirty: true })).rejects.toMatchObject({
        code: 'E_UNSUPPORTED',
        message: expect.stringMatching(
          new RegExp(`pid ${pid} fd 0 is a socket \\(socket:\\[\\d+\\]\\), a unix socket connected to pid ${process.pid} \\([^)]*\\) fd \\d+ outside the app`),
        ),
      });
    } finally {
      await engine.close();
    }
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(/TracerPid:\s+0\n/);
  });

  it('an epoll interest whose fd number now names another file', async () => {
    // the read end of pipe A is registered under fd r, kept alive by a dup,
    // then fd r is made to point at pipe B: the interest cannot be re-added
    const code =
      'import os,select,time\n' +
      'os.closerange(3, 65536)\n' +
      'r,w=os.pipe()\n' +
      'ep=select.epoll()\n' +
      'ep.register(r, select.EPOLLIN)\n' +
      'keep=os.dup(r)\n' +
      'r2,w2=os.pipe()\n' +
      'os.dup2(r2, r)\n' +
      'open("/proc/self/cwd/ready","w").close()\n' +
      'time.sleep(1000)\n';
    const ctl = tmp('epoll');
    const pid = python(code, ctl);
    await waitFor('python ready', () => existsSync(join(ctl, 'ready')));
    const engine = EngineClient.start();
    onCleanup(() => engine.kill());
    try {
      await expect(engine.attach(pid, { trackDirty: true })).rejects.toMatchObject({
        code: 'E_UNSUPPORTED',
        message: expect.stringMatching(new RegExp(`pid ${pid}: epoll fd \\d+ watches, under fd number \\d+, a file that is not the one open at fd`)),
      });
    } finally {
      await engine.close();
    }
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(/TracerPid:\s+0\n/);
  });
});
