// `understudy check`: run the native prober and pair each result with what it
// means. Every probe in PROBES gets a line; one the prober never reported (it
// crashed, or was not built with it) is a failure, never silently missing.
import { execa } from 'execa';
import { understudy } from '../gen/proto.js';
import { decodeFrames, requireVersion } from '../native/frames.js';
import { UnderstudyError } from '../util/errors.js';
import { nativeBinary } from '../util/paths.js';
import { PROBES, type ProbeSpec } from './probes.js';

export const CHECK_VERSION = 1;

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
      throw new UnderstudyError(
        'E_USAGE',
        `unknown probe ${unknown.join(', ')}; known probes: ${PROBES.map((p) => p.id).join(', ')}`,
      );
    }
  }
  const args: string[] = [];
  if (opts.only) args.push('--only', opts.only.join(','));
  if (opts.timeoutMs !== undefined) args.push('--timeout-ms', String(opts.timeoutMs));

  const proc = await execa(nativeBinary('check'), args, {
    encoding: 'buffer',
    reject: false,
    stdin: 'ignore',
    timeout: (opts.timeoutMs ?? 10_000) * (specs.length + 1),
  });
  // Exit 0 (all passed) and 1 (some failed) both carry results; anything else is the prober failing.
  if (proc.exitCode !== 0 && proc.exitCode !== 1) {
    const why = proc.timedOut ? 'timed out' : proc.signal ? `killed by ${proc.signal}` : `exited with ${proc.exitCode}`;
    const stderr = Buffer.from(proc.stderr as Uint8Array).toString('utf8').trim();
    throw new UnderstudyError('E_NATIVE', `the kernel feature prober ${why}${stderr ? `: ${stderr}` : ''}`);
  }

  const seen = new Map<string, understudy.v1.ProbeResult>();
  for (const frame of decodeFrames(proc.stdout as Uint8Array, 1 << 20, 'understudy-check output')) {
    const r = understudy.v1.ProbeResult.decode(frame);
    requireVersion('understudy-check result', r.version, CHECK_VERSION);
    seen.set(r.id, r);
  }

  const probes = specs.map<ProbeOutcome>((spec) => {
    const r = seen.get(spec.id);
    if (!r) {
      return { ...spec, ok: false, detail: 'the prober reported no result for this probe', errno: 0, durationMs: 0 };
    }
    return { ...spec, ok: r.ok, detail: r.detail, errno: r.errnoValue, durationMs: Number(r.durationNs) / 1e6 };
  });
  return { ok: probes.every((p) => p.ok || !p.required), probes };
}

/** Lines for a person: ✓/✗, the feature, and for ✗ what is missing and what it breaks. */
export function formatCheck(report: CheckReport, verbose = false): string {
  const lines = report.probes.map((p) =>
    p.ok
      ? `✓ ${p.title}${verbose ? `\n    seen: ${p.detail}` : ''}`
      : `✗ ${p.title}\n    missing: ${p.detail}\n    breaks:  ${p.breaks}`,
  );
  const failed = report.probes.filter((p) => !p.ok).length;
  lines.push(
    failed === 0
      ? `All ${report.probes.length} features present.`
      : `${failed} of ${report.probes.length} features missing; Understudy cannot protect apps on this kernel.`,
  );
  return lines.join('\n');
}
