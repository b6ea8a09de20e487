// The decoder refuses records it does not know (version, type, size), counts
// each refusal, and goes on with the next record of the batch.
import { describe, expect, it } from 'vitest';
import { RECORD_SIZES, RecordStream, RecordType, TR_VERSION, decodeRecord, sockaddrString, type TraceEvent } from '../../src/trace/records.js';

function record(type: number, size: number, version = TR_VERSION): Buffer {
  const b = Buffer.alloc(size);
  b.writeUInt16LE(version, 0);
  b.writeUInt16LE(type, 2);
  b.writeUInt32LE(size, 4);
  b.writeBigUInt64LE(123456789n, 8);
  b.writeUInt32LE(42, 16);
  b.writeUInt32LE(43, 20);
  return b;
}

function frame(rec: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32LE(rec.length, 0);
  return Buffer.concat([len, rec]);
}

describe('record decoder', () => {
  it('decodes a fork record field by field', () => {
    const r = record(RecordType.fork, RECORD_SIZES[RecordType.fork]!);
    r.writeUInt32LE(100, 24);
    r.writeUInt32LE(101, 28);
    r.writeUInt32LE(1, 32);
    r.write('worker', 40);
    expect(decodeRecord(r)).toEqual({ type: 'fork', ts: 123456789, tgid: 42, tid: 43, childTgid: 100, childTid: 101, isThread: true, comm: 'worker' });
  });

  it('decodes a write syscall with its fd info', () => {
    const r = record(RecordType.syscall, RECORD_SIZES[RecordType.syscall]!);
    r.writeUInt32LE(18, 24); // pwrite64
    r.writeBigInt64LE(100n, 32);
    r.writeBigUInt64LE(3n, 40);
    r.writeBigUInt64LE(4096n, 40 + 24);
    r.writeBigUInt64LE(777n, 88);
    const ev = decodeRecord(r);
    expect(ev).toMatchObject({ type: 'syscall', name: 'pwrite64', ret: 100, args: [3, 0, 0, 4096, 0, 0], aux: [777, 0, 0, 0] });
  });

  it('refuses unknown versions, types and sizes, counts them, and goes on', () => {
    const s = new RecordStream();
    const good = record(RecordType.exit, RECORD_SIZES[RecordType.exit]!);
    const batch = Buffer.concat([
      frame(record(RecordType.exit, RECORD_SIZES[RecordType.exit]!, 2)), // future version
      frame(record(77, 64)), // unknown type
      frame(record(RecordType.exit, RECORD_SIZES[RecordType.exit]! + 8)), // wrong size for its type
      frame(Buffer.alloc(10)), // shorter than a header
      frame(good),
    ]);
    const events: TraceEvent[] = [];
    expect(s.pushBatch(batch, (e) => events.push(e))).toBe(5);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ type: 'exit', tgid: 42, tid: 43 });
    expect(s.refused).toEqual({ badVersion: 1, unknownType: 1, badSize: 1, badFrame: 1 });
    expect(s.decoded).toBe(1);
  });

  it('a frame length no record can have, or a record cut short, ends its batch only', () => {
    const s = new RecordStream();
    const events: TraceEvent[] = [];
    const good = frame(record(RecordType.exit, RECORD_SIZES[RecordType.exit]!));
    const bad = Buffer.alloc(8);
    bad.writeUInt32LE(1 << 30, 0);
    // where the next record starts is unknown after the bad length: the good one after it is not read
    expect(s.pushBatch(Buffer.concat([bad, good]), (e) => events.push(e))).toBe(0);
    expect(s.refused.badFrame).toBe(1);
    // cut short: the length says more than the batch holds
    expect(s.pushBatch(Buffer.concat([good, good.subarray(0, good.length - 1)]), (e) => events.push(e))).toBe(1);
    expect(s.refused.badFrame).toBe(2);
    // the next batch starts clean
    expect(s.pushBatch(good, (e) => events.push(e))).toBe(1);
    expect(events).toHaveLength(2);
    expect(s.decoded).toBe(2);
  });

  it('names socket addresses', () => {
    const inet = Buffer.from([2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect(sockaddrString(inet)).toBe('127.0.0.1:8080');
    const unix = Buffer.concat([Buffer.from([1, 0]), Buffer.from('/run/db.sock\0')]);
    expect(sockaddrString(unix)).toBe('unix:/run/db.sock');
  });
});
