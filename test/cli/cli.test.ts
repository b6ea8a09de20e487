import { readdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/util/paths.js';
import { runCleanups, tmpDir } from '../helpers/cleanup.js';
import { runCli } from '../helpers/cli.js';

afterEach(runCleanups);

const pkg = JSON.parse(readFileSync(resolve(packageRoot, 'package.json'), 'utf8')) as { version: string };

describe('understudy CLI', () => {
  it('prints its version', async () => {
    const r = await runCli(['--version']);
    expect(r.exitCode).toBe(0);
    expect(r.stdout.trim()).toBe(pkg.version);
  });

  it('lists the commands in --help, and a command has its own --help', async () => {
    const top = await runCli(['--help']);
    expect(top.exitCode).toBe(0);
    expect(top.stdout).toMatch(/^usage: understudy/);
    expect(top.stdout).toMatch(/\n {2}check +test, on this kernel/);
    const sub = await runCli(['check', '--help']);
    expect(sub.exitCode).toBe(0);
    expect(sub.stdout).toMatch(/^usage: understudy check \[--only/);
  });

  it('exits 2 with usage on an unknown flag', async () => {
    const r = await runCli(['check', '--frobnicate']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/Unknown option '--frobnicate'/);
    expect(r.stderr).toMatch(/usage: understudy check/);
    expect(r.stdout).toBe('');
  });

  it('exits 2 with usage on an unknown command, and on none', async () => {
    const r = await runCli(['frobnicate']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/unknown command "frobnicate"/);
    const none = await runCli([]);
    expect(none.exitCode).toBe(2);
    expect(none.stderr).toMatch(/no command given/);
  });

  it('exits 2 on a flag value out of range', async () => {
    const r = await runCli(['check', '--timeout-ms', 'soon']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/--timeout-ms must be an integer/);
  });

  it('reads number flags one way in every command: decimal digits in range, else exit 2 naming the flag', async () => {
    const dir = tmpDir('flags');
    // Number('1e3') is 1000: a pid written so must not reach the engine as another process
    const d = await runCli(['dump', '--pid', '1e3', '-D', join(dir, 'img')]);
    expect(d.exitCode).toBe(2);
    expect(d.stderr).toContain('--pid must be an integer from 1 to 4194304, got "1e3" (see `understudy dump --help`)');
    expect(readdirSync(dir)).toEqual([]);
    const g = await runCli(['graph', '--pid', '0x10']);
    expect(g.exitCode).toBe(2);
    expect(g.stderr).toContain('--pid must be an integer from 1 to 4194304, got "0x10"');
    const g2 = await runCli(['graph']);
    expect(g2.exitCode).toBe(2);
    expect(g2.stderr).toContain('--pid PID is required (see `understudy graph --help`)');
    const r = await runCli(['restore', '-D', join(dir, 'img'), '--epoch', '1.5']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain('--epoch must be an integer from 0 to 999999, got "1.5"');
    const i = await runCli(['image', 'show', dir, '--epoch', '1000000']);
    expect(i.exitCode).toBe(2);
    expect(i.stderr).toContain('--epoch must be an integer from 0 to 999999, got "1000000"');
    const t = await runCli(['trace', '--pid', ' 7']);
    expect(t.exitCode).toBe(2);
    expect(t.stderr).toContain('--pid must be an integer from 1 to 4194304, got " 7"');
  });

  it('refuses to run a kernel command without root, saying why', async () => {
    // Run as uid 1000 inside a user namespace: the process is not root, yet
    // still reads the checkout wherever CI cloned it (a 0700 folder included).
    const r = await runCli(['check'], { wrap: ['unshare', '--user', '--map-user=1000', '--map-group=1000'] });
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/must run as root/);
    expect(r.stderr).toMatch(/CAP_SYS_PTRACE/);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace without --debug
  });

  it('refuses a bad config file, naming the key', async () => {
    const dir = tmpDir('cfg');
    chmodSync(dir, 0o755);
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ dataDir: '/tmp/x', replicas: 3 }));
    const r = await runCli(['--config', bad, 'check']);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain(`${bad}: unknown key "replicas"`);
    writeFileSync(bad, '{ not json');
    const r2 = await runCli(['check', '--config', bad]);
    expect(r2.exitCode).toBe(1);
    expect(r2.stderr).toMatch(/not valid JSON/);
    const r3 = await runCli(['check', '--config', join(dir, 'absent.json')]);
    expect(r3.exitCode).toBe(1);
    expect(r3.stderr).toMatch(/cannot read config file .*absent\.json: ENOENT/);
  });
});

describe('errors with --json', () => {
  it('also gives the error as a JSON line with its code', async () => {
    const r = await runCli(['restore', '-D', '/nonexistent/image', '--json']);
    expect(r.exitCode).toBe(1);
    const first = JSON.parse(r.stderr.split('\n')[0]!) as { error: { code: string; message: string } };
    expect(first.error.code).toBe('E_NOT_AN_IMAGE');
    expect(first.error.message).toContain('/nonexistent/image');
  });
});
