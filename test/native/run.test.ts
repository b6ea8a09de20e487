// understudy-run speaks one RunReport frame (run.proto) and src/native/run.ts
// reads it: the app's pids when it runs, the failure's code and message when
// it does not. (test/cli/run.test.ts covers `understudy run` end to end.)
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { understudy } from '../../src/gen/proto.js';
import { decodeFrames } from '../../src/native/frames.js';
import { RUN_VERSION, runApp } from '../../src/native/run.js';
import { UnderstudyError } from '../../src/util/errors.js';
import { nativeBinary } from '../../src/util/paths.js';

const started: number[] = [];
afterEach(() => {
  for (const pid of started.splice(0)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
});

function report(args: string[]): { status: number | null; report: understudy.v1.RunReport } {
  const r = spawnSync(nativeBinary('run'), args, { timeout: 10_000 });
  const frames = decodeFrames(r.stdout, 1 << 16, 'understudy-run stdout');
  expect(frames).toHaveLength(1);
  const rep = understudy.v1.RunReport.decode(frames[0]!);
  expect(rep.version).toBe(RUN_VERSION);
  return { status: r.status, report: rep };
}

describe('understudy-run over the seam', () => {
  it('reports the host pid and the namespace pid the kernel gave the app', async () => {
    const app = await runApp(['sleep', '1000'], '/dev/null');
    started.push(app.pid);
    const nspid = /\nNSpid:\t(\d+)\t(\d+)\n/.exec(readFileSync(`/proc/${app.pid}/status`, 'utf8'));
    expect(nspid?.slice(1).map(Number)).toEqual([app.pid, app.nsPid]);
    expect(app.nsPid).toBe(1);
    expect(readFileSync(`/proc/${app.pid}/comm`, 'utf8')).toBe('sleep\n');
  });

  it('a command that cannot start is the code and message the binary sent', async () => {
    const e = await runApp(['/nonexistent/app'], '/dev/null').then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(UnderstudyError);
    expect((e as UnderstudyError).code).toBe('E_NATIVE');
    expect((e as UnderstudyError).message).toBe('exec /nonexistent/app: No such file or directory');
  });

  it('the binary itself: a ready frame and exit 0; a usage failure frame with E_USAGE and exit 2', () => {
    const ok = report(['/dev/null', '--', 'true']);
    expect(ok.status).toBe(0);
    expect(ok.report.result).toBe('ready');
    expect(ok.report.ready!.hostPid).toBeGreaterThan(1);
    expect(ok.report.ready!.nsPid).toBe(1);

    const bad = report(['/dev/null', 'true']);
    expect(bad.status).toBe(2);
    expect(bad.report.result).toBe('failure');
    expect(bad.report.failure!.code).toBe(understudy.v1.ErrorCode.E_USAGE);
    expect(bad.report.failure!.message).toMatch(/^usage: understudy-run OUTPUT -- CMD/);

    const noexec = report(['/dev/null', '--', '/nonexistent/app']);
    expect(noexec.status).toBe(1);
    expect(noexec.report.failure!.code).toBe(understudy.v1.ErrorCode.E_NATIVE);
    expect(noexec.report.failure!.errnoValue).toBe(2); // ENOENT
  });
});
