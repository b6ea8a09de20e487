// Typed client of the kernel feature prober (build/native/understudy-check):
// runs it once and returns each ProbeResult frame it wrote (check.proto),
// keyed by probe id. What a probe means to a person is src/check/'s business.
import { execa } from 'execa';
import { understudy } from '../gen/proto.js';
import { UnderstudyError } from '../util/errors.js';
import { nativeBinary } from '../util/paths.js';
import { decodeFrames, requireVersion } from './frames.js';

export const CHECK_VERSION = 1;

/** One probe's result as the prober reported it. */
export interface ProbeResult {
  id: string;
  ok: boolean;
  /** What was observed, or the step that failed (call, object, errno text). */
  detail: string;
  /** errno of the failing call, 0 when none. */
  errno: number;
  durationMs: number;
}

export interface ProberOptions {
  /** Probe ids to run (all when absent). */
  only?: string[];
  /** Per-probe limit, passed to the prober (default 10 s). */
  timeoutMs?: number;
  /** How many probes will run: the whole run may take (count + 1) × the per-probe limit. */
  count?: number;
}

/** Runs the prober; a probe it did not report is simply absent from the map. */
export async function runProber(opts: ProberOptions = {}): Promise<Map<string, ProbeResult>> {
  const args: string[] = [];
  if (opts.only) args.push('--only', opts.only.join(','));
  if (opts.timeoutMs !== undefined) args.push('--timeout-ms', String(opts.timeoutMs));

  const proc = await execa(nativeBinary('check'), args, {
    encoding: 'buffer',
    reject: false,
    stdin: 'ignore',
    timeout: (opts.timeoutMs ?? 10_000) * ((opts.count ?? opts.only?.length ?? 16) + 1),
  });
  // Exit 0 (all passed) and 1 (some failed) both carry results; anything else is the prober failing.
  if (proc.exitCode !== 0 && proc.exitCode !== 1) {
    const why = proc.timedOut ? 'timed out' : proc.signal ? `killed by ${proc.signal}` : `exited with ${proc.exitCode}`;
    const stderr = Buffer.from(proc.stderr as Uint8Array)
      .toString('utf8')
      .trim();
    throw new UnderstudyError('E_NATIVE', `the kernel feature prober (understudy-check) ${why}${stderr ? `: ${stderr}` : ''}`);
  }

  const seen = new Map<string, ProbeResult>();
  for (const frame of decodeFrames(proc.stdout as Uint8Array, 1 << 20, 'understudy-check output')) {
    let r: understudy.v1.ProbeResult;
    try {
      r = understudy.v1.ProbeResult.decode(frame);
    } catch (e) {
      throw new UnderstudyError('E_FRAME', `understudy-check output: a result that does not decode (${(e as Error).message})`, { cause: e });
    }
    requireVersion('understudy-check result', r.version, CHECK_VERSION);
    seen.set(r.id, { id: r.id, ok: r.ok, detail: r.detail, errno: r.errnoValue, durationMs: Number(r.durationNs) / 1e6 });
  }
  return seen;
}
