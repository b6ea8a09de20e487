// Every restore fixture from epoch 0 + 20 deltas, restored on a second "node"
// (its own network namespace and its own copy of the app's data folder) -> PASS.
import { cpSync, existsSync, mkdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { restore } from '../../src/native/restorer.js';
import { TestCluster } from '../helpers/nodes.js';
import { dumpAndKill, killPids, onCleanup, runCleanups, startFixture, tmp, verdict } from './helpers.js';
import { FIXTURES } from './roundtrip.js';

afterEach(runCleanups);

describe('restore on a second node (own network namespace, own copy of the data folder)', () => {
  let cluster: TestCluster | undefined;
  afterAll(async () => {
    await cluster?.destroy();
  });

  for (const name of FIXTURES) {
    it(`${name}: epoch 0 + 20 deltas restored on node 2 -> PASS`, async () => {
      const scratch = tmp(`${name}-nodes`);
      const dataDir = join(scratch, 'data');
      mkdirSync(dataDir);
      const nodes = new TestCluster(dataDir, join(scratch, 'roots'));
      cluster = nodes;
      onCleanup(async () => {
        await nodes.destroy();
      });
      const node = await nodes.addNode();
      const ctl = join(dataDir, 'app');
      mkdirSync(ctl);
      const fx = await startFixture(name, ctl);
      const img = join(scratch, 'image');
      const d = await dumpAndKill(fx.pid, img, 20);
      // node 2's own copy of the data folder, as replicated up to the checkpoint
      cpSync(dataDir, node.dataRoot, { recursive: true, preserveTimestamps: true });
      const r = await restore({
        imageDir: img,
        wrap: (argv) => nodes.wrap(node, argv),
      });
      onCleanup(() => killPids([r.reaper, ...r.pids]));
      expect([...r.pids].sort()).toEqual([...d.pids].sort());
      // it runs in node 2's network namespace
      const netns = readlinkSync(`/proc/${fx.pid}/ns/net`);
      expect(netns).not.toBe(readlinkSync('/proc/self/ns/net'));
      // the verdict lands in node 2's copy, the original folder is untouched
      expect(await verdict(join(node.dataRoot, 'app'))).toBe('PASS');
      expect(existsSync(join(ctl, 'verdict'))).toBe(false);
    });
  }
});
