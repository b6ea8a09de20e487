// Typed client of understudy-run (build/native/understudy-run): starts CMD in
// its own PID namespace, as its pid 1 (docs/restore.md), and reads the one
// RunReport frame the binary writes (run.proto): the app's pids, or why it
// did not start. The app and understudy-run (its parent on the host) run on
// detached from the agent.
import { spawn } from 'node:child_process';
import { understudy } from '../gen/proto.js';
import { UnderstudyError } from '../util/errors.js';
import { nativeBinary } from '../util/paths.js';
import { binaryError } from './codes.js';
import { FrameDecoder, requireVersion } from './frames.js';

export const RUN_VERSION = 1;
const BINARY = 'understudy-run';

export interface RunningApp {
  /** The app's pid on this node: what `understudy dump --pid` takes. */
  pid: number;
  /** Its pid inside its own PID namespace (1). */
  nsPid: number;
}

/** Starts CMD, its stdout and stderr appended to `output` ("/dev/null" for none). */
export function runApp(cmd: string[], output: string): Promise<RunningApp> {
  return new Promise((resolveApp, reject) => {
    const child = spawn(nativeBinary('run'), [output, '--', ...cmd], {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const decoder = new FrameDecoder(64 * 1024, `${BINARY} stdout`);
    const frames: Uint8Array[] = [];
    let stderr = '';
    let framingError: unknown;
    child.stdout.on('data', (d: Buffer) => {
      if (framingError !== undefined) return;
      try {
        frames.push(...decoder.push(d));
      } catch (e) {
        framingError = e;
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    child.on('error', (e) => reject(new UnderstudyError('E_NATIVE', `cannot start ${BINARY}: ${e.message}`)));
    // 'close': the process exited and all of its output has been read
    const exited = new Promise<string>((r) => child.once('close', (code, signal) => r(signal ? `was killed by ${signal}` : `exited with status ${code}`)));
    // stdout ends once the app is running, or could not be started
    child.stdout.on('end', () => {
      let report: understudy.v1.RunReport;
      try {
        if (framingError !== undefined) throw framingError;
        decoder.end();
        if (frames.length !== 1) {
          // no report: the binary died before it could write one (stderr may say why)
          void exited.then((how) =>
            reject(
              new UnderstudyError(
                frames.length === 0 ? 'E_NATIVE' : 'E_FRAME',
                `${BINARY} ${how} after ${frames.length} reports (1 expected)` + (stderr.trim() ? `: ${stderr.trim()}` : ''),
              ),
            ),
          );
          return;
        }
        try {
          report = understudy.v1.RunReport.decode(frames[0]!);
        } catch (e) {
          throw new UnderstudyError('E_FRAME', `${BINARY}: a report that does not decode (${(e as Error).message})`, { cause: e });
        }
        requireVersion(`${BINARY} report`, report.version, RUN_VERSION);
      } catch (e) {
        child.kill('SIGKILL');
        reject(e);
        return;
      }
      if (report.result === 'ready') {
        const r = report.ready as understudy.v1.RunReady;
        child.unref();
        child.stdout.destroy();
        child.stderr.destroy();
        resolveApp({ pid: r.hostPid, nsPid: r.nsPid });
        return;
      }
      if (report.result === 'failure') {
        const f = report.failure as understudy.v1.RunFailure;
        reject(binaryError(BINARY, f.code, f.message));
        return;
      }
      reject(new UnderstudyError('E_FRAME', `${BINARY}: a report with neither ready nor failure`));
    });
  });
}
