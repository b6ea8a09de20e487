// The trace and graph commands, run as a user runs them.
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CLI as cli, runCli } from '../helpers/cli.js';
import { cleanupAll, spawnOutside, tempDir } from './helpers.js';

const run = (args: string[], env: Record<string, string> = {}) => runCli(args, { env, timeout: 30_000 });

describe('understudy trace / graph', () => {
  afterEach(cleanupAll);

  it('trace --json -- CMD prints one JSON event per line and exits with the command', async () => {
    const dir = tempDir('cli');
    const f = join(dir, 'f.txt');
    const r = await run(['trace', '--json', '--', '/bin/sh', '-c', `printf abc > ${f}; exit 3`]);
    expect(r.exitCode).toBe(3);
    const lines = r.stdout
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.find((l) => l.type === 'exec')).toMatchObject({ filename: '/bin/sh', comm: 'sh' });
    const open = lines.find((l) => l.type === 'syscall' && l.name === 'openat' && (l.paths as string[])[0] === f);
    expect(open).toBeDefined();
    const write = lines.find((l) => l.type === 'syscall' && l.name === 'write')!;
    expect(write.ret).toBe(3);
    expect((write.args as number[]).slice(0, 3)).toEqual([1, expect.any(Number), 3]); // fd 1 (redirected), 3 bytes
    expect((write.aux as number[])[3]).toBe(3); // file position after the write
    expect(lines.find((l) => l.type === 'exit')).toMatchObject({ groupDead: true, exitCode: 3 << 8 });
    expect(lines[lines.length - 1]).toMatchObject({ type: 'summary', lost: 0, writeFaultsNotCounted: 0, childrenNotFiltered: 0, stoppedBy: 'exit' });
    expect(readFileSync(f, 'utf8')).toBe('abc');
  });

  it('trace -- CMD exits 128+N when the command dies of signal N', async () => {
    const r = await run(['trace', '--', '/bin/sh', '-c', 'kill -USR1 $$']);
    expect(r.exitCode).toBe(128 + 10); // SIGUSR1
  });

  it('trace --pid follows a running process and stops when it exits', async () => {
    const dir = tempDir('cli');
    const f = join(dir, 'tick');
    const app = spawnOutside([
      'python3',
      '-c',
      `import time,sys\nprint('up',flush=True)\nsys.stdin.readline()\nfor i in range(5):\n  open('${f}','w').close(); time.sleep(0.1)\n`,
    ]);
    await app.out.waitFor(/^up$/);
    const tracer = run(['trace', '--pid', String(app.child.pid)]);
    await new Promise((r) => setTimeout(r, 1500)); // attached
    app.child.stdin!.write('go\n');
    const r = await tracer;
    expect(r.exitCode).toBe(0);
    const opens = r.stdout.split('\n').filter((l) => l.includes(`openat(${f})`));
    expect(opens).toHaveLength(5);
    expect(r.stdout).toContain(`${app.child.pid}/${app.child.pid} exit process status 0`);
    expect(r.stdout).toMatch(/trace: \d+ events, 0 lost in the ring buffer/);
  });

  it('trace stops on SIGTERM and leaves the process running', async () => {
    const app = spawnOutside(['sleep', '30']);
    const tracer = spawn('node', [cli, 'trace', '--json', '--pid', String(app.child.pid)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    tracer.stdout.on('data', (c: Buffer) => (out += c.toString()));
    await new Promise((r) => setTimeout(r, 1500));
    tracer.kill('SIGTERM');
    const code = await new Promise<number | null>((res) => tracer.on('exit', (c) => res(c)));
    expect(code).toBe(0);
    expect(JSON.parse(out.trim().split('\n').pop()!)).toMatchObject({ type: 'summary', stoppedBy: 'signal' });
    expect(app.child.exitCode).toBeNull();
    expect(() => process.kill(app.child.pid!, 0)).not.toThrow();
  });

  it('trace ends with E_TRACER when its tracer dies, and leaves the process running', async () => {
    const app = spawnOutside(['sleep', '30']);
    const tracer = spawn('node', [cli, 'trace', '--pid', String(app.child.pid)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    tracer.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const exited = new Promise<number | null>((res) => tracer.on('exit', (c) => res(c)));
    // the native tracer: the CLI's child running understudy-tracer
    let tracerPid: number | undefined;
    for (let i = 0; i < 100 && tracerPid === undefined; i++) {
      await new Promise((r) => setTimeout(r, 50));
      // pgrep exits 1 while there is none yet
      const ps = spawnSync('pgrep', ['-P', String(tracer.pid), '-f', 'understudy-tracer'], { encoding: 'utf8' });
      if (ps.stdout.trim() !== '') tracerPid = Number(ps.stdout.trim().split('\n')[0]);
    }
    expect(tracerPid, 'the native tracer was started').toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 500)); // attached
    process.kill(tracerPid!, 'SIGKILL');
    const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running after 10 s'), 10_000))]);
    if (code === 'still running after 10 s') tracer.kill('SIGKILL');
    expect(code).toBe(1);
    expect(err).toMatch(/understudy: the eBPF tracer was killed by SIGKILL after \d+ events: the app is no longer traced and keeps running \(pid \d+\)/);
    expect(() => process.kill(app.child.pid!, 0)).not.toThrow();
  });

  it('graph --format svg draws the processes and highlights external dependencies', async () => {
    const dir = tempDir('cli');
    const app = spawnOutside(['/bin/sh', '-c', 'sleep 30 | cat']);
    await new Promise((r) => setTimeout(r, 300));
    const svg = join(dir, 'g.svg');
    const r = await run(['graph', '--pid', String(app.child.pid), '--format', 'svg', '-o', svg]);
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/graph of 3 processes, \d+ nodes, [1-9]\d* external dependencies written to/);
    const text = readFileSync(svg, 'utf8');
    expect(text).toContain('<svg');
    expect(text).toContain(`sh (${app.child.pid})`);
    expect(text).toContain('sleep (');
    expect(text).toContain('cat (');
    // cat's stdout is this test's pipe: an external dependency, drawn red
    expect(text).toMatch(/stroke="red"/);
    const json = await run(['graph', '--pid', String(app.child.pid), '--format', 'json']);
    const snap = JSON.parse(json.stdout) as { nodes: { id: string; kind: string }[]; externalDependencies: { peer: { pid?: number } }[] };
    expect(snap.nodes.filter((n) => n.kind === 'process' && !('external' in n)).length).toBe(3);
    expect(snap.externalDependencies.some((d) => d.peer.pid === process.pid)).toBe(true);
  });

  it('refuses a PID that does not exist, pointing to understudy check', async () => {
    for (const args of [
      ['graph', '--pid', '999999'],
      ['trace', '--pid', '999999'],
    ]) {
      const r = await run(args);
      expect(r.exitCode).toBe(1);
      expect(r.stderr).toContain('no running process with PID 999999');
      expect(r.stderr).toContain('understudy check');
      expect(r.stderr).not.toMatch(/at .*\.js:\d+/); // no stack trace
    }
  });

  it('refuses a kernel without BTF with a clear message, pointing to understudy check', async () => {
    const r = await run(['trace', '--', 'true'], { UNDERSTUDY_BTF_PATH: '/nonexistent/vmlinux' });
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('this kernel has no BTF (/nonexistent/vmlinux is missing)');
    expect(r.stderr).toContain('understudy check');
  });

  it('usage errors exit 2', async () => {
    expect((await run(['trace'])).exitCode).toBe(2);
    expect((await run(['graph', '--pid', 'abc'])).exitCode).toBe(2);
    expect((await run(['graph', '--pid', '1', '--format', 'png'])).exitCode).toBe(2);
  });
});
