// understudy-run (native/run) started by a caller that left some of fds 0-2
// closed: the app still gets /dev/null as stdin and OUTPUT as stdout and
// stderr, and the pid line never lands in the app's output.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { nativeBinary } from '../../src/util/paths.js';
import { runCleanups, tmp, waitFor } from './helpers.js';

afterEach(runCleanups);

describe("understudy-run with the caller's stdio closed", () => {
  for (const fd of [0, 1, 2]) {
    it(`fd ${fd} closed by the caller: the app has /dev/null and OUTPUT at 0, 1, 2 all the same`, async () => {
      const out = join(tmp(`run-closed-${fd}`), 'out');
      // the app prints where its fds 0, 1 and 2 lead, then a marker on stderr
      const app = 'readlink /proc/self/fd/0; readlink /proc/self/fd/1; readlink /proc/self/fd/2; echo done >&2';
      const r = spawnSync('bash', ['-c', `exec ${fd}<&- ${fd}>&-; exec "$0" "$@"`, nativeBinary('run'), out, '--', 'sh', '-c', app], {
        encoding: 'utf8',
        timeout: 10_000,
      });
      expect(r.status).toBe(0);
      await waitFor('the app to finish', () => readFileSync(out, 'utf8').includes('done\n'), 5000);
      expect(readFileSync(out, 'utf8').split('\n')).toEqual(['/dev/null', out, out, 'done', '']);
    });
  }
});
