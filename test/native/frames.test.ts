import { describe, expect, it } from 'vitest';
import { decodeFrames, encodeFrame, FrameDecoder, requireVersion } from '../../src/native/frames.js';
import { understudy } from '../../src/gen/proto.js';

describe('length-prefixed protobuf frames', () => {
  it('round-trips a protobuf message through a frame', () => {
    const msg = understudy.v1.ProbeResult.create({ version: 1, id: 'btf', ok: true, detail: 'x', durationNs: 1234 });
    const bytes = Buffer.concat([
      encodeFrame(understudy.v1.ProbeResult.encode(msg).finish()),
      encodeFrame(understudy.v1.ProbeResult.encode({ version: 1, id: 'ringbuf', ok: false, errnoValue: 38 }).finish()),
    ]);
    const frames = decodeFrames(bytes);
    expect(frames).toHaveLength(2);
    const a = understudy.v1.ProbeResult.decode(frames[0]!);
    const b = understudy.v1.ProbeResult.decode(frames[1]!);
    expect(a.id).toBe('btf');
    expect(a.ok).toBe(true);
    expect(Number(a.durationNs)).toBe(1234);
    expect(b.id).toBe('ringbuf');
    expect(b.ok).toBe(false);
    expect(b.errnoValue).toBe(38);
  });

  it('refuses a truncated frame and names where it broke', () => {
    const whole = encodeFrame(Buffer.from('hello world'));
    expect(() => decodeFrames(whole.subarray(0, whole.length - 3), 1024, 'img')).toThrow(/img: frame at byte 0 claims 11 bytes but only 8 follow/);
    expect(() => decodeFrames(whole.subarray(0, 2), 1024, 'img')).toThrow(/inside a frame header/);
  });

  it('refuses a frame longer than the limit', () => {
    const big = Buffer.alloc(8);
    big.writeUInt32LE(5000, 0);
    expect(() => decodeFrames(big, 4096)).toThrow(/claims 5000 bytes, above the limit of 4096/);
  });

  it('streams frames split across arbitrary chunk boundaries', () => {
    const payloads = [Buffer.from('a'), Buffer.alloc(0), Buffer.from('bcdefg'), Buffer.alloc(300, 7)];
    const stream = Buffer.concat(payloads.map(encodeFrame));
    const dec = new FrameDecoder(1024);
    const got: Buffer[] = [];
    for (let i = 0; i < stream.length; i += 5) got.push(...dec.push(stream.subarray(i, i + 5)).map((f) => Buffer.from(f)));
    dec.end();
    expect(got).toEqual(payloads);
    dec.push(Buffer.from([1, 0]));
    expect(() => dec.end()).toThrow(/ended inside a frame/);
  });

  it('refuses an unknown message version', () => {
    expect(() => requireVersion('engine reply', 2, 1)).toThrow(/message version 2 is not supported/);
    expect(() => requireVersion('engine reply', 1, 1)).not.toThrow();
  });
});
