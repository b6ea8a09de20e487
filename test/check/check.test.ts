import { describe, expect, it } from 'vitest';
import { PROBES } from '../../src/check/probes.js';
import { runCli } from '../helpers/cli.js';

interface JsonProbe {
  id: string;
  ok: boolean;
  detail: string;
  errno: number;
  breaks: string;
  title: string;
}

// The probes run for real on this machine's kernel; every feature the design
// relies on is present on the machines it runs on (see README.md, Requirements), so all must pass.
describe('understudy check', () => {
  it('finds every required feature on this machine, as JSON', async () => {
    const r = await runCli(['check', '--json']);
    const report = JSON.parse(r.stdout) as { ok: boolean; probes: JsonProbe[] };
    const failed = report.probes.filter((p) => !p.ok).map((p) => `${p.id}: ${p.detail}`);
    expect(failed).toEqual([]);
    expect(r.exitCode).toBe(0);
    expect(report.ok).toBe(true);
    expect(report.probes.map((p) => p.id)).toEqual(PROBES.map((p) => p.id));
    for (const p of report.probes) expect(p.detail.length).toBeGreaterThan(0);
  });

  it('prints one ✓ line per feature for a person', async () => {
    const r = await runCli(['check']);
    expect(r.exitCode).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.filter((l) => l.startsWith('✓ '))).toHaveLength(PROBES.length);
    expect(lines.filter((l) => l.startsWith('✗ '))).toHaveLength(0);
    for (const p of PROBES) expect(r.stdout).toContain(`✓ ${p.title}`);
    expect(lines.at(-1)).toBe(`All ${PROBES.length} features present.`);
  });

  it('reports a missing feature with its reason and what it breaks, and exits non-zero', async () => {
    const r = await runCli(['check'], { env: { UNDERSTUDY_CHECK_DISABLE: 'pagemap_scan,ringbuf' } });
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toMatch(/✗ BPF ring buffer\n {4}missing: .*forced unavailable by UNDERSTUDY_CHECK_DISABLE.*\n {4}breaks: {2}events cannot be streamed/);
    expect(r.stdout).toMatch(/✗ PAGEMAP_SCAN ioctl.*\n {4}missing: .*UNDERSTUDY_CHECK_DISABLE.*\n {4}breaks: {2}incremental checkpoints/);
    expect(r.stdout.split('\n').filter((l) => l.startsWith('✓ '))).toHaveLength(PROBES.length - 2);
    expect(r.stdout).toMatch(/2 of 15 features missing/);

    const j = await runCli(['check', '--json', '--only', 'ringbuf,btf'], { env: { UNDERSTUDY_CHECK_DISABLE: 'ringbuf' } });
    expect(j.exitCode, j.stderr).toBe(1);
    expect(j.stdout, `no JSON report; stderr: ${j.stderr}`).not.toBe('');
    const report = JSON.parse(j.stdout) as { ok: boolean; probes: JsonProbe[] };
    expect(report.ok).toBe(false);
    expect(report.probes.map((p) => [p.id, p.ok])).toEqual([
      ['btf', true],
      ['ringbuf', false],
    ]);
    expect(report.probes[1]!.errno).toBe(38); // ENOSYS, as a kernel without the feature says
  });

  it('runs only the probes asked for, and refuses an unknown one', async () => {
    const r = await runCli(['check', '--json', '--only', 'tcp_repair']);
    expect(r.exitCode).toBe(0);
    const report = JSON.parse(r.stdout) as { probes: JsonProbe[] };
    expect(report.probes.map((p) => p.id)).toEqual(['tcp_repair']);
    const bad = await runCli(['check', '--only', 'warp_drive']);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toMatch(/unknown probe warp_drive; known probes: bpf_syscall, btf/);
  });
});

describe('understudy check --verbose', () => {
  it('says what each passing probe observed', async () => {
    const r = await runCli(['check', '--verbose', '--only', 'clone3_set_tid,pagemap_scan']);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/✓ PAGEMAP_SCAN ioctl.*\n {4}seen: .*exactly \[3,4\) and \[11,12\)/);
    expect(r.stdout).toMatch(/✓ clone3 with set_tid.*\n {4}seen: .*getpid\(\) is 4242/);
  });
});
