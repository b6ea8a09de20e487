// Bad input to `understudy dump` and the engine: a PID that does not exist or
// is not ours, an app holding a resource kind the engine does not handle yet.
// Clear errors, non-zero exit, nothing changed (no image, app untraced).
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineClient } from '../../src/native/engine.js';
import { runCli } from '../helpers/cli.js';
import { onCleanup, procState, runCleanups, settledState, startFixture, tmp, waitFor } from './helpers.js';

afterAll(runCleanups);

describe('dump refuses what is not an app of ours', () => {
  it('a pid that does not exist', async () => {
    const dir = join(tmp('img'), 'x');
    const r = await runCli(['dump', '--pid', '4000000', '-D', dir]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/no process with pid 4000000/);
    expect(existsSync(dir)).toBe(false);
  });

  it('pid 1, a kernel thread, and the agent itself', async () => {
    const dir = join(tmp('img'), 'x');
    let r = await runCli(['dump', '--pid', '1', '-D', dir]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/pid 1 is the init process/);
    r = await runCli(['dump', '--pid', '2', '-D', dir]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/pid 2 is a kernel thread/);
    // this test process is an ancestor of the engine the CLI starts
    r = await runCli(['dump', '--pid', String(process.pid), '-D', dir]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`pid ${process.pid} is the agent or one of its ancestors`));
    expect(existsSync(dir)).toBe(false);
    expect(procState(process.pid).tracer).toBe(0);
  });

  it('usage errors exit 2', async () => {
    expect((await runCli(['dump', '-D', '/tmp/x'])).exitCode).toBe(2);
    expect((await runCli(['dump', '--pid', 'abc', '-D', '/tmp/x'])).exitCode).toBe(2);
    expect((await runCli(['dump', '--pid', '5'])).exitCode).toBe(2);
  });

  it('an image directory that already holds an image', async () => {
    const fx = await startFixture({ mb: 1 });
    const dir = join(tmp('img'), 'x');
    expect((await runCli(['dump', '--pid', String(fx.pid), '-D', dir, '--leave-running'])).exitCode).toBe(0);
    const before = readdirSync(dir);
    const r = await runCli(['dump', '--pid', String(fx.pid), '-D', dir, '--leave-running']);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/already holds an image \(epoch-000000\)/);
    expect(readdirSync(dir)).toEqual(before);
    expect(procState(fx.pid).tracer).toBe(0);
    fx.kill();
  });

  it("a process holding a socket (node's stdio pipe) is refused up front, naming pid, fd and kind", async () => {
    const p = spawn('sleep', ['1000'], { stdio: ['pipe', 'ignore', 'ignore'] });
    onCleanup(() => p.kill('SIGKILL'));
    await waitFor('sleep started', () => existsSync(`/proc/${p.pid}/fd/0`) || undefined, 2000);
    const engine = EngineClient.start();
    try {
      await expect(engine.attach(p.pid!, { trackDirty: true })).rejects.toMatchObject({
        code: 'E_UNSUPPORTED',
        message: expect.stringMatching(new RegExp(`pid ${p.pid} fd 0 is a socket \\(socket:\\[\\d+\\]\\)`)),
      });
      expect(procState(p.pid!).tracer).toBe(0);
      expect(await settledState(p.pid!)).toBe('S');
    } finally {
      await engine.close();
    }
    const dir = join(tmp('img'), 'x');
    const r = await runCli(['dump', '--pid', String(p.pid), '-D', dir]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/fd 0 is a socket/);
    expect(existsSync(dir)).toBe(false);
    // refused, so not killed: it is still there
    expect(await settledState(p.pid!)).toBe('S');
  });
});

// POSIX timers are captured now; the timer states still refused are in
// test/restore/timers.test.ts.

describe('seccomp', () => {
  it('a process under a seccomp filter is refused: an injected syscall could be killed by it', async () => {
    // an allow-all filter (one BPF_RET SECCOMP_RET_ALLOW), installed with ctypes
    const code =
      'import ctypes,os,time,struct\n' +
      'libc=ctypes.CDLL(None, use_errno=True)\n' +
      'ins=(ctypes.c_ubyte*8).from_buffer_copy(struct.pack("<HBBI",0x06,0,0,0x7fff0000))\n' +
      'class Prog(ctypes.Structure):\n' +
      '  _fields_=[("len",ctypes.c_ushort),("filter",ctypes.c_void_p)]\n' +
      'prog=Prog(1,ctypes.cast(ins,ctypes.c_void_p))\n' +
      'assert libc.prctl(38,1,0,0,0)==0\n' +
      'assert libc.prctl(22,2,ctypes.byref(prog),0,0)==0\n' +
      'os.closerange(0,1024)\n' +
      'time.sleep(1000)\n';
    const p = spawn('python3', ['-c', code], { stdio: ['ignore', 'ignore', 'ignore'] });
    onCleanup(() => p.kill('SIGKILL'));
    await waitFor(
      'python under seccomp',
      () => {
        try {
          return /^Seccomp:\s+2$/m.test(readFileSync(`/proc/${p.pid}/status`, 'utf8')) && readdirSync(`/proc/${p.pid}/fd`).length === 0 ? true : undefined;
        } catch {
          return undefined;
        }
      },
      10_000,
    );
    const engine = EngineClient.start();
    try {
      await expect(engine.attach(p.pid!, { trackDirty: true })).rejects.toMatchObject({
        code: 'E_UNSUPPORTED',
        message: expect.stringMatching(new RegExp(`pid ${p.pid} runs under seccomp \\(filter mode\\)`)),
      });
    } finally {
      await engine.close();
    }
    expect(procState(p.pid!).tracer).toBe(0);
    expect(await settledState(p.pid!)).toBe('S');
  });
});

describe('dump, CRIU style', () => {
  it('kills the app after the dump unless --leave-running; incremental epochs with --epochs', async () => {
    const fx = await startFixture({ mb: 4, threads: 1 });
    const dir = join(tmp('img'), 'x');
    const r = await runCli(['dump', '--pid', String(fx.pid), '-D', dir, '--epochs', '3', '--interval-ms', '50', '--leave-running', '--json']);
    expect(r.exitCode).toBe(0);
    const out = JSON.parse(r.stdout) as { epochs: { epoch: number; full: boolean }[] };
    expect(out.epochs.map((e) => [e.epoch, e.full])).toEqual([
      [0, true],
      [1, false],
      [2, false],
      [3, false],
    ]);
    expect(procState(fx.pid).tracer).toBe(0);
    const dir2 = join(tmp('img'), 'y');
    const r2 = await runCli(['dump', '--pid', String(fx.pid), '-D', dir2]);
    expect(r2.exitCode).toBe(0);
    expect(r2.stdout).toMatch(/killed after the dump/);
    await waitFor('app killed', () => fx.proc.exitCode !== null || fx.proc.signalCode !== null || undefined, 5000);
    expect(fx.proc.signalCode).toBe('SIGKILL');
  });
});
