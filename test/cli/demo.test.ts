import { describe, expect, it } from 'vitest';
import { PROBES } from '../../src/check/probes.js';
import { runCli } from '../helpers/cli.js';

describe('understudy demo (the quick start main job)', () => {
  it('checks the kernel on the embedded default configuration, then tours the CLI', async () => {
    const r = await runCli(['demo']);
    expect(r.exitCode).toBe(0);
    expect(r.stdout.split('\n').filter((l) => l.startsWith('✓ '))).toHaveLength(PROBES.length);
    expect(r.stdout).toContain('Configuration: embedded default (data in /var/lib/understudy)');
    expect(r.stdout).toContain('understudy check [--json]');
    const j = await runCli(['demo', '--json']);
    const parsed = JSON.parse(j.stdout) as { check: { ok: boolean }; config: { dataDir: string } };
    expect(parsed.check.ok).toBe(true);
    expect(parsed.config.dataDir).toBe('/var/lib/understudy');
  });
});
