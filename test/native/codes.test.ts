// One enum of error codes across the seam: the code a native binary raises is
// the code the agent sees (a retryable E_BUSY from the engine stays E_BUSY),
// and a code the enum does not list, or E_UNSPECIFIED, is an error naming the
// binary that sent it, not a crash and not a code passed on unchecked.
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { understudy } from '../../src/gen/proto.js';
import { binaryError, errorCodeName, errorCodeValue } from '../../src/native/codes.js';
import { ENGINE_VERSION, EngineClient } from '../../src/native/engine.js';
import { encodeFrame } from '../../src/native/frames.js';
import { UnderstudyError } from '../../src/util/errors.js';

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) {
    try {
      f();
    } catch {
      // already gone
    }
  }
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'us-codes-'));
  cleanups.push(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function rejection(p: Promise<unknown>): Promise<UnderstudyError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(UnderstudyError);
    return e as UnderstudyError;
  }
  throw new Error('expected a rejection');
}

/** A python app that writes an ever larger count to `out`, holding no fd of the test runner. */
function counter(out: string): ChildProcess {
  const code = [
    'import os, time',
    'os.closerange(3, 1024)',
    'i = 0',
    'while True:',
    '    i += 1',
    `    with open(${JSON.stringify(out)} + ".tmp", "w") as f: f.write(str(i))`,
    `    os.rename(${JSON.stringify(out)} + ".tmp", ${JSON.stringify(out)})`,
    '    time.sleep(0.01)',
  ].join('\n');
  return spawn('python3', ['-c', code], { stdio: 'ignore' });
}

/** A stand-in engine: waits for the first request, answers it with `reply` (id 1), then waits for stdin to close. */
function fakeEngine(reply: understudy.v1.IEngineReply): string {
  const dir = tmp();
  const frame = join(dir, 'reply.bin');
  writeFileSync(frame, encodeFrame(understudy.v1.EngineReply.encode({ version: ENGINE_VERSION, id: 1, ...reply }).finish()));
  const bin = join(dir, 'engine');
  writeFileSync(bin, `#!/bin/sh\nhead -c 1 >/dev/null\ncat '${frame}'\nexec cat >/dev/null\n`);
  chmodSync(bin, 0o755);
  return bin;
}

describe('error codes at the seam', () => {
  it('names every value of errors.proto both ways, and nothing else', () => {
    const names = Object.keys(understudy.v1.ErrorCode).filter((n) => n !== 'E_UNSPECIFIED');
    expect(names).toContain('E_BUSY');
    for (const n of names) {
      const v = understudy.v1.ErrorCode[n as keyof typeof understudy.v1.ErrorCode];
      expect(errorCodeName(v)).toBe(n);
      expect(errorCodeValue(n as Parameters<typeof errorCodeValue>[0])).toBe(v);
    }
    expect(errorCodeName(understudy.v1.ErrorCode.E_UNSPECIFIED)).toBeUndefined();
    expect(errorCodeName(names.length + 1)).toBeUndefined();
    expect(errorCodeName(-1)).toBeUndefined();
  });

  it('a retryable E_BUSY raised inside the engine reaches the agent as E_BUSY, and the app runs on', async () => {
    const dir = tmp();
    const out = join(dir, 'count');
    const app = counter(out);
    cleanups.push(() => app.kill('SIGKILL'));
    await until('the app to count', () => existsSync(out) && Number(readFileSync(out, 'utf8')) > 0);
    // The hook makes every read of ITIMER_REAL look raced by its firing: after
    // five tries the engine gives up with E_BUSY, as under a real race.
    const engine = EngineClient.start({ env: { UNDERSTUDY_ENGINE_ITIMER_RACE: '1' } });
    cleanups.push(() => engine.kill());
    await engine.attach(app.pid!, { trackDirty: true });
    const e = await rejection(engine.checkpoint({ imageDir: join(dir, 'img') }));
    expect(e.code).toBe('E_BUSY');
    expect(e.message).toMatch(new RegExp(`pid ${app.pid}: ITIMER_REAL kept firing while it was read; try the checkpoint again`));
    // the engine is still serving, the app is released from the barrier and counts on
    expect((await engine.status()).pids).toEqual([app.pid]);
    await engine.detach();
    const seen = Number(readFileSync(out, 'utf8'));
    await until('the app to count on after the refused checkpoint', () => Number(readFileSync(out, 'utf8')) > seen + 3);
    await engine.close();
  });

  it('without the hook the same engine checkpoints that app (the hook, not the app, made it busy)', async () => {
    const dir = tmp();
    const app = counter(join(dir, 'count'));
    cleanups.push(() => app.kill('SIGKILL'));
    await until('the app to count', () => existsSync(join(dir, 'count')));
    const engine = EngineClient.start();
    cleanups.push(() => engine.kill());
    await engine.attach(app.pid!, { trackDirty: true });
    const r = await engine.checkpoint({ imageDir: join(dir, 'img') });
    expect(r.epoch).toBe(0);
    await engine.close();
  });

  it('a reply with a code errors.proto does not list is E_FRAME naming the binary; E_UNSPECIFIED is E_NATIVE', async () => {
    const unknown = EngineClient.start({ binary: fakeEngine({ ok: false, code: 999 as understudy.v1.ErrorCode, error: 'boom' }) });
    cleanups.push(() => unknown.kill());
    const e1 = await rejection(unknown.status());
    expect(e1.code).toBe('E_FRAME');
    expect(e1.message).toMatch(/understudy-engine\) sent error code 999, which errors\.proto does not list.*: boom$/);
    // the client is not broken by it: the stand-in is still there to be closed
    expect(unknown.alive).toBe(true);
    await unknown.close();

    const unspecified = EngineClient.start({ binary: fakeEngine({ ok: false, error: 'no code given' }) });
    cleanups.push(() => unspecified.kill());
    const e2 = await rejection(unspecified.status());
    expect(e2.code).toBe('E_NATIVE');
    expect(e2.message).toMatch(/understudy-engine\) reported a failure without an error code: no code given$/);
    await unspecified.close();
  });

  it('binaryError passes a listed code through unchanged', () => {
    const e = binaryError('understudy-x', understudy.v1.ErrorCode.E_IMAGE_CHAIN, 'epoch 3 is missing');
    expect([e.code, e.message]).toEqual(['E_IMAGE_CHAIN', 'epoch 3 is missing']);
  });
});
