// Pins that earlier versions left in bpffs: they loaded the tracer with
// bpftool and pinned it under /sys/fs/bpf/understudy/<app>/. A crashed agent
// of such a version left its folder behind; the tracer removes it at start,
// and leaves alone the folders of an old agent still running (its programs
// are attached) or just starting (younger than the grace period).
import { existsSync, mkdirSync, rmSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { LEGACY_BPFFS_ROOT } from '../../src/trace/loader.js';
import { Tracer } from '../../src/trace/tracer.js';
import { bpfObject } from '../../src/util/paths.js';
import { onCleanup, runCleanups } from '../helpers/cleanup.js';

describe('pins of earlier versions', () => {
  afterEach(runCleanups);

  /** What an earlier version's loader did: bpftool prog loadall, pinned per app. */
  async function oldLoad(app: string): Promise<string> {
    const dir = join(LEGACY_BPFFS_ROOT, app);
    mkdirSync(dir, { recursive: true });
    onCleanup(() => rmSync(dir, { recursive: true, force: true }));
    await execa('bpftool', ['prog', 'loadall', bpfObject('trace'), join(dir, 'progs'), 'pinmaps', join(dir, 'maps')]);
    return dir;
  }

  const aMinuteAgo = (dir: string): void => {
    const ago = new Date(Date.now() - 60_000);
    utimesSync(dir, ago, ago);
  };

  it('removes those of a crashed agent at start, and keeps those in use or too young', async () => {
    // in use: a folder pinning a program that is attached (here one of a running tracer's)
    const running = await Tracer.start({ appId: 'running', onEvent: () => {} });
    onCleanup(() => running.stop());
    const crashed = await oldLoad(`crashed-${process.pid}`);
    aMinuteAgo(crashed);
    const young = await oldLoad(`young-${process.pid}`);
    const live = join(LEGACY_BPFFS_ROOT, `live-${process.pid}`);
    mkdirSync(join(live, 'progs'), { recursive: true });
    onCleanup(() => rmSync(live, { recursive: true, force: true }));
    await execa('bpftool', ['prog', 'pin', 'id', String(running.attachedPrograms[0]!.id), join(live, 'progs', 'p')]);
    aMinuteAgo(live);

    const next = await Tracer.start({ appId: 'next', onEvent: () => {}, staleGraceMs: 10_000 });
    onCleanup(() => next.stop());
    const removed = next.staleRemoved.filter((r) => r.appId.endsWith(`-${process.pid}`));
    expect(removed).toEqual([{ appId: `crashed-${process.pid}`, path: crashed, programs: 6 }]);
    expect(existsSync(crashed)).toBe(false);
    expect(existsSync(young)).toBe(true);
    expect(existsSync(live)).toBe(true);
  });
});
