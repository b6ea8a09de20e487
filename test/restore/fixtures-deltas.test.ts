// Every restore fixture from epoch 0 + 20 deltas -> kill -> restore of epoch
// 20 (same pids) -> PASS; and python3 continuing its output in sequence.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { processesOf, readEpochMeta } from '../../src/image/store.js';
import { restore } from '../../src/native/restorer.js';
import { cutToCheckpoint, dumpAndKill, epochDir, fixturePython, killPids, onCleanup, runCleanups, startFixture, tmp, waitFor } from './helpers.js';
import { FIXTURES, roundTrip } from './roundtrip.js';

afterEach(runCleanups);

describe('restore fixtures, same node, epoch 0 + 20 deltas', () => {
  for (const name of FIXTURES) {
    it(`${name}: epoch 0 + 20 deltas -> kill -> restore of epoch 20 -> PASS`, async () => roundTrip(name, 20));
  }

  it('python3: a compute loop with a timer continues its output in sequence', async () => {
    const ctl = tmp('py');
    const out = join(ctl, 'out');
    const fx = await startFixture('python', ctl, ['/usr/bin/python3', fixturePython, out]);
    await waitFor('python output', () => existsSync(out) && readFileSync(out, 'utf8').split('\n').length > 10);
    const img = join(tmp('py-img'), 'image');
    const d = await dumpAndKill(fx.pid, img, 20, 20);
    const before = cutToCheckpoint(processesOf(readEpochMeta(epochDir(img, d.lastEpoch)))[0]!, out);
    const r = await restore({ imageDir: img });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    expect(r.pids).toEqual([fx.pid]);
    await waitFor('python to write after the restore', () => readFileSync(out, 'utf8').trim().split('\n').length >= before.length + 20);
    killPids([r.reaper, ...r.pids]);
    const lines = readFileSync(out, 'utf8').trim().split('\n');
    // the sequence continues: every index once, in order; the running value recomputed
    let acc = 0;
    for (let i = 0; i < lines.length; i++) {
      const [idx, val] = lines[i]!.split(' ').map(Number);
      expect(idx, `line ${i}: ${lines[i]}`).toBe(i);
      // each line follows exactly one or more 2000-step rounds: the value must be reachable
      let ok = false;
      for (let rounds = 0; rounds < 100000 && !ok; rounds++) {
        for (let k = 0; k < 2000; k++) acc = (acc * 31 + k) % 1000000007;
        ok = acc === val;
      }
      expect(ok, `line ${i}: value ${val} follows from the previous one`).toBe(true);
    }
  });
});
