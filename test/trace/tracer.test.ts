// The native tracer (build/native/understudy-tracer) and its client
// (src/native/tracer.ts): it owns the eBPF programs for its whole life, takes
// requests over the seam, streams record batches, and however it ends —
// stop, stdin EOF, SIGTERM, SIGKILL — none of its programs or links stays in
// the kernel. Program ids (not names: other tracers may run beside this one)
// are checked against `bpftool prog show` and `bpftool link show`.
import { spawn } from 'node:child_process';
import { chmodSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { FrameDecoder, encodeFrame } from '../../src/native/frames.js';
import { understudy } from '../../src/gen/proto.js';
import { TRACER_VERSION, TracerProcess, recordLayoutDifferences } from '../../src/native/tracer.js';
import { RECORD_SIZES, RecordStream, RecordType, TR_VERSION, type TraceEvent } from '../../src/trace/records.js';
import { Tracer } from '../../src/trace/tracer.js';
import { packageRoot } from '../../src/util/paths.js';
import { tempDir, cleanupAll } from './helpers.js';

async function bpftoolJson<T>(args: string[]): Promise<T> {
  const r = await execa('bpftool', ['--json', ...args]);
  return JSON.parse(r.stdout || 'null') as T;
}

/** Of these program ids, those still loaded, and those still attached through a link. */
async function stillInKernel(ids: number[]): Promise<{ loaded: number[]; linked: number[] }> {
  const progs = new Set(((await bpftoolJson<{ id: number }[] | null>(['prog', 'show'])) ?? []).map((p) => p.id));
  const links = new Set(((await bpftoolJson<{ prog_id: number }[] | null>(['link', 'show'])) ?? []).map((l) => l.prog_id));
  return { loaded: ids.filter((i) => progs.has(i)), linked: ids.filter((i) => links.has(i)) };
}

/** The kernel frees a program a little after its last fd closes (an RCU grace period): wait for it. */
async function expectGoneFromKernel(ids: number[]): Promise<void> {
  const end = Date.now() + 10_000;
  let left = await stillInKernel(ids);
  while ((left.loaded.length > 0 || left.linked.length > 0) && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    left = await stillInKernel(ids);
  }
  expect(left).toEqual({ loaded: [], linked: [] });
}

const waitFor = async (p: () => boolean, ms = 10_000): Promise<void> => {
  const end = Date.now() + ms;
  while (!p()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
};

function startProcess(opts: Partial<Parameters<typeof TracerProcess.start>[0]> = {}) {
  const events: TraceEvent[] = [];
  const decoder = new RecordStream();
  return {
    events,
    decoder,
    proc: TracerProcess.start({
      recordVersion: TR_VERSION,
      recordSizes: RECORD_SIZES,
      onRecords: (b) => decoder.pushBatch(b, (e) => events.push(e)),
      pollMs: 5,
      ...opts,
    }),
  };
}

describe('understudy-tracer', () => {
  const toStop: TracerProcess[] = [];
  afterEach(async () => {
    for (const p of toStop.splice(0)) p.kill();
    await cleanupAll();
  });

  it('loads and attaches the six programs through its skeleton, fills the filter, and sends its records', async () => {
    const s = startProcess();
    const proc = await s.proc;
    toStop.push(proc);
    const { programs, recordSizes, recordVersion } = proc.hello;
    const names = programs.map((p) => p.name);
    expect(programs).toHaveLength(3 + 1 + 1 + 1); // sched, page faults, TCP state, ONE sys_exit program for all syscalls
    expect(names).toContain('btf__sched_process_fork');
    expect(names).toContain('btf__sys_exit');
    expect(names.some((n) => n.startsWith('tp__syscalls__') || n.includes('sys_enter'))).toBe(false);
    expect(programs.filter((p) => p.type === 'tracing').length).toBe(4); // tp_btf: sched x3 + sys_exit
    expect(programs.filter((p) => p.type === 'tracepoint').length).toBe(2); // page_fault_user, inet_sock_set_state
    expect(programs.find((p) => p.name === 'btf__sys_exit')!.section).toBe('tp_btf/sys_exit');
    expect(recordVersion).toBe(TR_VERSION);
    expect(recordSizes).toEqual(RECORD_SIZES);
    const ids = programs.map((p) => p.id);
    expect(await stillInKernel(ids)).toEqual({ loaded: ids, linked: ids }); // every one attached through a link
    // nothing pinned
    const pinned = (await bpftoolJson<{ id: number; pinned?: string[] }[] | null>(['prog', 'show', '--bpffs'])) ?? [];
    expect(pinned.filter((p) => ids.includes(p.id) && (p.pinned ?? []).length > 0)).toEqual([]);

    await proc.addTgids([process.pid, 1]);
    expect((await proc.status({ filter: true })).filterTgids.sort((a, b) => a - b)).toEqual([1, process.pid].sort((a, b) => a - b));
    // The filter the programs test: one bit per tgid in app_bits (word tgid/64, bit tgid%64).
    const prog = await bpftoolJson<{ map_ids: number[] }>(['prog', 'show', 'id', String(ids[0])]);
    let bitsId = -1;
    for (const m of prog.map_ids) if ((await bpftoolJson<{ name: string }>(['map', 'show', 'id', String(m)])).name === 'app_bits') bitsId = m;
    expect(bitsId).toBeGreaterThan(0);
    const word = async (k: number) =>
      BigInt((await bpftoolJson<{ formatted: { value: number } }>(['map', 'lookup', 'id', String(bitsId), 'key', ...le32(k)])).formatted.value);
    expect(await word(0)).toBe(1n << 1n); // tgid 1 alone in word 0
    expect(((await word(Math.floor(process.pid / 64))) >> BigInt(process.pid % 64)) & 1n).toBe(1n);
    // out of the kernel's pid range: refused with the tgid named, nothing half-done
    await expect(proc.addTgids([process.pid + 1, 1 << 22])).rejects.toMatchObject({
      code: 'E_USAGE',
      message: expect.stringContaining('tgid 4194304 out of range'),
    });
    expect((await proc.status({ filter: true })).filterTgids).toHaveLength(2);

    // a child of ours: its records were all sent before the reply to the next request
    const sub = execa('true');
    const child = { pid: sub.pid! };
    await sub;
    const st = await proc.status();
    const exit = s.events.find((e) => e.type === 'exit' && e.tgid === child.pid);
    expect(exit).toMatchObject({ groupDead: true });
    expect(s.events.some((e) => e.type === 'fork' && e.tgid === process.pid && e.childTgid === child.pid)).toBe(true);
    expect(s.events.some((e) => e.type === 'exec' && e.tgid === child.pid)).toBe(true);
    expect(st.delivered).toBeGreaterThanOrEqual(3);
    expect(st.counters[0]).toBe(0); // no ring buffer losses
    expect(st.perCpu.length).toBe(proc.hello.possibleCpus);
    expect(st.perCpu.reduce((a, c) => a + c.counters[5]!, 0)).toBe(st.counters[5]); // submitted, summed over CPUs
    expect(s.decoder.refused).toEqual({ badVersion: 0, unknownType: 0, badSize: 0, badFrame: 0 });
  });

  it('reads and forgets write-fault counts per process', async () => {
    const s = startProcess();
    const proc = await s.proc;
    toStop.push(proc);
    const app = spawn(
      'python3',
      [
        '-c',
        'import sys,mmap\nsys.stdin.readline()\nm = mmap.mmap(-1, 1 << 20)\nfor p in range(16): m[p * 4096] = 1\nprint("done", flush=True)\nsys.stdin.readline()\n',
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    const done = new Promise<void>((r) => app.stdout.on('data', (c: Buffer) => c.toString().includes('done') && r()));
    await proc.addTgids([app.pid!]);
    app.stdin.write('\n');
    await done;
    const mine = await proc.readWriteFaults([app.pid!]);
    expect(mine.length).toBeGreaterThan(0);
    expect(mine.every((f) => f.tgid === app.pid && f.count > 0 && f.address > 0)).toBe(true);
    expect(mine.reduce((a, f) => a + f.count, 0)).toBeGreaterThanOrEqual(16);
    const all = await proc.readWriteFaults();
    expect(all.filter((f) => f.tgid === app.pid)).toEqual(mine);
    expect(await proc.forget([app.pid!])).toBe(mine.length);
    expect(await proc.readWriteFaults([app.pid!])).toEqual([]);
    expect(await proc.forget([app.pid!])).toBe(0);
    app.stdin.end('\n');
  });

  it('on a stop request: replies with the last counters, ends its stream, detaches everything and exits 0', async () => {
    const s = startProcess();
    const proc = await s.proc;
    toStop.push(proc);
    const ids = proc.hello.programs.map((p) => p.id);
    const last = await proc.stop();
    expect(last.counters).toHaveLength(8);
    await proc.waitExit();
    expect(proc.exitStatus).toBe('exited with status 0');
    await expectGoneFromKernel(ids);
    await expect(proc.status()).rejects.toMatchObject({ code: 'E_TRACER', message: expect.stringContaining('exited with status 0') });
  });

  it('killed (SIGKILL), it leaves no program or link behind, and fails the request it was answering', async () => {
    const s = startProcess();
    const proc = await s.proc;
    toStop.push(proc);
    const ids = proc.hello.programs.map((p) => p.id);
    proc.kill('SIGSTOP'); // the request below stays pending
    const pending = proc.status();
    await new Promise((r) => setTimeout(r, 100));
    proc.kill('SIGKILL');
    await expect(pending).rejects.toMatchObject({
      code: 'E_TRACER',
      message: expect.stringMatching(/the tracer \(pid \d+\) was killed by SIGKILL.*no longer traced/),
    });
    await expectGoneFromKernel(ids);
  });

  for (const how of ['stdin EOF', 'SIGTERM'] as const) {
    it(`on ${how}: the last records and stats, end of stream, then it detaches (the frames, read raw)`, async () => {
      const child = spawn(resolve(packageRoot, 'build/native/understudy-tracer'), ['--poll-ms', '5'], { stdio: ['pipe', 'pipe', 'pipe'] });
      const dec = new FrameDecoder(1 << 26, 'tracer');
      const outs: understudy.v1.TracerOutput[] = [];
      const events: TraceEvent[] = [];
      const rs = new RecordStream();
      child.stdout.on('data', (c: Buffer) => {
        for (const f of dec.push(c)) {
          const o = understudy.v1.TracerOutput.decode(f);
          outs.push(o);
          if (o.body === 'records') rs.pushBatch(Buffer.from(o.records), (e) => events.push(e));
        }
      });
      // 'close', not 'exit': after the last byte of stdout was read
      const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
      await waitFor(() => outs.length > 0);
      expect(outs[0]!.body).toBe('hello');
      expect(outs[0]!.version).toBe(TRACER_VERSION);
      const ids = outs[0]!.hello!.programs!.map((p) => p.id!);
      const req = understudy.v1.TracerRequest.encode({ version: TRACER_VERSION, id: 7, addTgids: { tgids: [process.pid] } }).finish();
      child.stdin.write(encodeFrame(req));
      await waitFor(() => outs.some((o) => o.body === 'reply'));
      const rep = outs.find((o) => o.body === 'reply')!.reply!;
      expect([Number(rep.id), rep.ok]).toEqual([7, true]);
      await execa('true'); // fork + exec + exit of a child of ours
      if (how === 'SIGTERM') child.kill('SIGTERM');
      else child.stdin.end();
      expect(await exited).toBe(0);
      expect(outs[outs.length - 1]!.body).toBe('stats');
      expect(dec.buffered).toBe(0);
      expect(events.some((e) => e.type === 'fork' && e.tgid === process.pid)).toBe(true);
      expect(events.some((e) => e.type === 'exit')).toBe(true);
      await expectGoneFromKernel(ids);
    });
  }

  it('a request it cannot decode, or of another version, gets an error reply and it goes on', async () => {
    const child = spawn(resolve(packageRoot, 'build/native/understudy-tracer'), [], { stdio: ['pipe', 'pipe', 'inherit'] });
    const dec = new FrameDecoder(1 << 26, 'tracer');
    const replies: understudy.v1.ITracerReply[] = [];
    child.stdout.on('data', (c: Buffer) => {
      for (const f of dec.push(c)) {
        const o = understudy.v1.TracerOutput.decode(f);
        if (o.body === 'reply') replies.push(o.reply!);
      }
    });
    // 'close', not 'exit': after the last byte of stdout was read
    const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    child.stdin.write(encodeFrame(Buffer.from([0xff, 0xff, 0xff])));
    child.stdin.write(encodeFrame(understudy.v1.TracerRequest.encode({ version: 99, id: 3, status: {} }).finish()));
    child.stdin.write(encodeFrame(understudy.v1.TracerRequest.encode({ version: TRACER_VERSION, id: 4, status: {} }).finish()));
    await waitFor(() => replies.length === 3);
    const E = understudy.v1.ErrorCode;
    const plain = replies.map((r) => ({ id: Number(r.id), ok: r.ok, code: r.error?.code, message: r.error?.message }));
    expect(plain[0]).toEqual({ id: 0, ok: false, code: E.E_FRAME, message: 'cannot decode a TracerRequest of 3 bytes' });
    expect(plain[1]).toMatchObject({ id: 3, ok: false, code: E.E_VERSION, message: expect.stringContaining('request version 99 is not supported') });
    expect(plain[2]).toEqual({ id: 4, ok: true, code: undefined, message: undefined });
    child.stdin.end();
    expect(await exited).toBe(0);
  });

  it('a start that fails says why with an error code (here: an object file that does not exist)', async () => {
    const s = startProcess({ object: '/nonexistent/floor.bpf.o' });
    await expect(s.proc).rejects.toMatchObject({
      code: 'E_TRACER',
      message: expect.stringContaining('bpf_object__open_file(/nonexistent/floor.bpf.o): No such file or directory'),
    });
  });

  it('a frame from the tracer that does not decode: the tracer is killed and the request fails, saying so', async () => {
    // a stand-in tracer: a right hello, then garbage as the answer to any request
    const dir = tempDir('fake-tracer');
    const fake = join(dir, 'fake-tracer.mjs');
    const sizes = Object.entries(RECORD_SIZES).map(([type, size]) => ({ type: Number(type), size }));
    writeFileSync(
      fake,
      `#!${process.execPath}\n` +
        `import { understudy } from ${JSON.stringify(resolve(packageRoot, 'src/gen/proto.js'))};\n` +
        `const frame = (b) => { const h = Buffer.alloc(4); h.writeUInt32LE(b.length); return Buffer.concat([h, b]); };\n` +
        `process.stdout.write(frame(understudy.v1.TracerOutput.encode({ version: 1, hello: { pid: process.pid, recordVersion: ${TR_VERSION}, recordSizes: ${JSON.stringify(sizes)} } }).finish()));\n` +
        `process.stdin.on('data', () => process.stdout.write(frame(Buffer.from([0xff, 0xff, 0xff]))));\n` +
        `setInterval(() => {}, 1000);\n`,
    );
    chmodSync(fake, 0o755);
    const s = startProcess({ binary: fake });
    const proc = await s.proc;
    toStop.push(proc);
    await expect(proc.status()).rejects.toMatchObject({ code: 'E_TRACER', message: expect.stringContaining('does not decode') });
    await proc.waitExit();
    expect(proc.exitStatus).toBe('was killed by SIGKILL');
  });
});

describe('record sizes: the decoder and the tracer must agree', () => {
  afterEach(cleanupAll);

  it('lists every difference between a hello and the decoder', () => {
    expect(recordLayoutDifferences({ recordVersion: TR_VERSION, recordSizes: { ...RECORD_SIZES } }, TR_VERSION, RECORD_SIZES)).toEqual([]);
    const hello = { recordVersion: 2, recordSizes: { ...RECORD_SIZES, [RecordType.fork]: 64, 9: 16 } as Record<number, number> };
    delete hello.recordSizes[RecordType.tcpState];
    expect(recordLayoutDifferences(hello, TR_VERSION, RECORD_SIZES)).toEqual([
      `record version 2 (the decoder knows ${TR_VERSION})`,
      'type 1: 64 bytes in the tracer, 56 in the decoder',
      'type 6: not sent by the tracer (the decoder expects 80 bytes)',
      'type 9: 16 bytes, unknown to the decoder',
    ]);
  });

  it('a decoder written for another size is refused at start, and the tracer stopped', async () => {
    const pretend = { ...RECORD_SIZES, [RecordType.syscall]: RECORD_SIZES[RecordType.syscall]! + 8 };
    const err = await Tracer.start({ appId: 'sizes', onEvent: () => {}, recordSizes: pretend }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'E_VERSION',
      message: expect.stringContaining(
        "the tracer's records are not laid out as this agent decodes them (type 4: 120 bytes in the tracer, 128 in the decoder)",
      ),
    });
    // gone when start fails (its programs went with it: see the SIGKILL test above)
    const pid = Number(/The tracer \(pid (\d+)\) was stopped/.exec((err as Error).message)?.[1]);
    expect(pid).toBeGreaterThan(0);
    expect(() => process.kill(pid, 0)).toThrow(/ESRCH/);
  });
});

function le32(n: number): string[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff].map(String);
}
