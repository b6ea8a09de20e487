// The native streamer (build/native/understudy-tracer) on its own: it attaches
// every pinned program, streams frames, and on stdin EOF or SIGTERM ends its
// stream with a stats record and detaches everything.
import { spawn } from 'node:child_process';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { PinnedTracer } from '../../src/trace/loader.js';
import { RecordStream, type TraceEvent } from '../../src/trace/records.js';
import { nativeBinary } from '../../src/util/paths.js';
import { waitFor } from '../helpers/wait.js';

async function attachedIds(): Promise<Set<number>> {
  const links = JSON.parse((await execa('bpftool', ['--json', 'link', 'show'])).stdout || '[]') as { prog_id: number }[];
  return new Set(links.map((l) => l.prog_id));
}

function runStreamer(dir: string) {
  const child = spawn(nativeBinary('tracer'), ['--pins', dir, '--poll-ms', '5'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const rs = new RecordStream();
  const events: TraceEvent[] = [];
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => events.push(...rs.push(c)));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return { child, events, rs, exited, stderr: () => stderr };
}

describe('understudy-tracer', () => {
  let pins: PinnedTracer | undefined;
  afterEach(() => {
    pins?.unload();
    pins = undefined;
  });

  for (const how of ['stdin EOF', 'SIGTERM'] as const) {
    it(`attaches all programs, and on ${how} ends the stream with stats and detaches`, async () => {
      pins = await PinnedTracer.load(`streamer-${process.pid}-${how === 'SIGTERM' ? 't' : 'e'}`, { staleGraceMs: 60_000 });
      const ids = (await pins.programs()).map((p) => p.id);
      const s = runStreamer(pins.dir);
      await waitFor('a first event', () => s.events.length > 0);
      expect(s.events[0]!.type).toBe('stats'); // the ready signal
      const attached = await attachedIds();
      expect(ids.filter((id) => !attached.has(id))).toEqual([]);
      // a traced process: this one
      await pins.addTgids([process.pid]);
      await execa('true'); // fork + exec + exit of a child of ours
      await waitFor('the exit event', () => s.events.some((e) => e.type === 'exit'));
      if (how === 'SIGTERM') s.child.kill('SIGTERM');
      else s.child.stdin.end();
      expect(await s.exited).toBe(0);
      expect(s.events[s.events.length - 1]!.type).toBe('stats');
      expect(s.rs.leftover).toBe(0);
      const after = await attachedIds();
      expect(ids.filter((id) => after.has(id))).toEqual([]);
      expect(s.events.some((e) => e.type === 'fork' && e.tgid === process.pid)).toBe(true);
    });
  }

  it('fails with a message naming the object and errno when pins are missing', async () => {
    const s = runStreamer('/sys/fs/bpf/understudy/does-not-exist');
    s.child.stdin.end();
    expect(await s.exited).toBe(1);
    expect(s.stderr()).toContain('bpf_obj_get(/sys/fs/bpf/understudy/does-not-exist/maps/events): No such file or directory');
    expect(s.events).toEqual([]);
  });

  it('--forget-tgid: refuses bad numbers and a mix with --add-tgid (exit 2), names missing pins (exit 1)', async () => {
    const run = (args: string[]) => execa(nativeBinary('tracer'), args, { reject: false, stdin: 'ignore' });
    for (const bad of [['--forget-tgid', '0'], ['--forget-tgid', '12x'], ['--forget-tgid', '-1'], ['--forget-tgid', '5', '--add-tgid', '6']]) {
      const r = await run(['--pins', '/sys/fs/bpf/understudy/does-not-exist', ...bad]);
      expect(r.exitCode, bad.join(' ')).toBe(2);
      expect(r.stderr).toContain('usage:');
    }
    const r = await run(['--pins', '/sys/fs/bpf/understudy/does-not-exist', '--forget-tgid', '5']);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('bpf_obj_get(/sys/fs/bpf/understudy/does-not-exist/maps/write_faults): No such file or directory');
  });
});
