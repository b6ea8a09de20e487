// `understudy check`: run the native prober (its client: src/native/check.ts)
// and pair each result with what it means. Every probe in PROBES gets a line;
// one the prober never reported (it crashed, or was not built with it) is a
// failure, never silently missing.
import { runProber } from '../native/check.js';
import { UnderstudyError } from '../util/errors.js';
import { PROBES, type ProbeSpec } from './probes.js';

export interface ProbeOutcome extends ProbeSpec {
  ok: boolean;
  detail: string;
  errno: number;
  durationMs: number;
}

export interface CheckReport {
  ok: boolean;
  probes: ProbeOutcome[];
}

export async function runCheck(opts: { only?: string[]; timeoutMs?: number } = {}): Promise<CheckReport> {
  const specs = opts.only ? PROBES.filter((p) => opts.only!.includes(p.id)) : [...PROBES];
  if (opts.only) {
    const unknown = opts.only.filter((id) => !PROBES.some((p) => p.id === id));
    if (unknown.length > 0) {
      throw new UnderstudyError('E_USAGE', `unknown probe ${unknown.join(', ')}; known probes: ${PROBES.map((p) => p.id).join(', ')}`);
    }
  }
  const seen = await runProber({ only: opts.only, timeoutMs: opts.timeoutMs, count: specs.length });

  const probes = specs.map<ProbeOutcome>((spec) => {
    const r = seen.get(spec.id);
    if (!r) {
      return { ...spec, ok: false, detail: 'the prober reported no result for this probe', errno: 0, durationMs: 0 };
    }
    return { ...spec, ok: r.ok, detail: r.detail, errno: r.errno, durationMs: r.durationMs };
  });
  return { ok: probes.every((p) => p.ok || !p.required), probes };
}

/** Lines for a person: ✓/✗, the feature, and for ✗ what is missing and what it breaks. */
export function formatCheck(report: CheckReport, verbose = false): string {
  const lines = report.probes.map((p) =>
    p.ok ? `✓ ${p.title}${verbose ? `\n    seen: ${p.detail}` : ''}` : `✗ ${p.title}\n    missing: ${p.detail}\n    breaks:  ${p.breaks}`,
  );
  const failed = report.probes.filter((p) => !p.ok).length;
  lines.push(
    failed === 0
      ? `All ${report.probes.length} features present.`
      : `${failed} of ${report.probes.length} features missing; Understudy cannot protect apps on this kernel.`,
  );
  return lines.join('\n');
}
