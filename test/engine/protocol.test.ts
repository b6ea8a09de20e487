// The engine's frame protocol: an unknown message version is refused with a
// clear error (and the engine keeps serving), a request without attach too.
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { encodeFrame, FrameDecoder } from '../../src/native/frames.js';
import { understudy } from '../../src/gen/proto.js';
import { ENGINE_VERSION } from '../../src/native/engine.js';
import { nativeBinary } from '../../src/util/paths.js';

function exchange(reqs: understudy.v1.IEngineRequest[]): Promise<understudy.v1.EngineReply[]> {
  return new Promise((resolve, reject) => {
    const p = spawn(nativeBinary('engine'), [], { stdio: ['pipe', 'pipe', 'inherit'] });
    const dec = new FrameDecoder();
    const out: understudy.v1.EngineReply[] = [];
    p.stdout.on('data', (c: Buffer) => {
      for (const f of dec.push(c)) out.push(understudy.v1.EngineReply.decode(f));
    });
    p.on('error', reject);
    p.on('exit', () => resolve(out));
    for (const r of reqs) p.stdin.write(encodeFrame(understudy.v1.EngineRequest.encode(r).finish()));
    p.stdin.end();
  });
}

describe('engine protocol', () => {
  it('refuses an unknown version, a checkpoint before attach, and keeps going', async () => {
    const out = await exchange([
      { version: 1, id: 1, status: {} },
      { version: ENGINE_VERSION, id: 2, checkpoint: { imageDir: '/tmp/nowhere' } },
      { version: ENGINE_VERSION, id: 3, status: {} },
    ]);
    expect(out.map((r) => Number(r.id))).toEqual([1, 2, 3]);
    expect(out[0]!.ok).toBe(false);
    expect(out[0]!.code).toBe(understudy.v1.ErrorCode.E_VERSION);
    expect(out[0]!.error).toMatch(new RegExp(`request version 1 is not supported \\(this engine speaks version ${ENGINE_VERSION}\\)`));
    expect(out[1]!.ok).toBe(false);
    expect(out[1]!.code).toBe(understudy.v1.ErrorCode.E_USAGE);
    expect(out[1]!.error).toMatch(/not attached to any app/);
    expect(out[2]!.ok).toBe(true);
    expect(out[2]!.status?.threads).toBe(0);
  });
});
