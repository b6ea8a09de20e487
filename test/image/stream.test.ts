// The epoch stream reader on its own: frames cut anywhere by the pipe come out
// as whole epochs, equal to what was sent; a corrupted, mismatched or cut
// stream is refused, naming what is wrong.
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { understudy } from '../../src/gen/proto.js';
import { EpochStreamReader, streamedPages } from '../../src/image/stream.js';

function frame(payload: Uint8Array): Buffer {
  const b = Buffer.alloc(4 + payload.length);
  b.writeUInt32LE(payload.length, 0);
  b.set(payload, 4);
  return b;
}

/** One epoch of `npages` pages of pid 42 at 0x10000, sent in chunks of `chunk` bytes. */
function epochBytes(epoch: number, npages: number, chunk: number, opts: { badCrc?: boolean; otherId?: boolean } = {}) {
  const pages = Buffer.alloc(npages * 4096);
  for (let i = 0; i < pages.length; i += 4) pages.writeUInt32LE((i * 2654435761 + epoch) >>> 0, i);
  const crcs = Array.from({ length: npages }, (_, i) => crc32(pages.subarray(i * 4096, (i + 1) * 4096)));
  const meta = understudy.v1.EpochMeta.create({
    version: 1,
    epoch,
    full: epoch === 0,
    parentEpoch: epoch ? epoch - 1 : 0,
    imageId: 'ab'.repeat(16),
    pageSize: 4096,
    pagesBytes: pages.length,
    processes: [{ pid: 42, pages: npages ? [{ vaddr: 0x10000, npages, offset: 0, crc32: crcs }] : [] }],
  });
  const body = Buffer.from(understudy.v1.EpochMeta.encode(meta).finish());
  const header = understudy.v1.EpochStreamHeader.encode({
    version: 1,
    requestId: 7 + epoch,
    epoch,
    imageId: opts.otherId ? 'cd'.repeat(16) : 'ab'.repeat(16),
    metaBytes: body.length,
    metaCrc32: opts.badCrc ? crc32(body) ^ 1 : crc32(body),
    pagesBytes: pages.length,
    chunkBytes: chunk,
  }).finish();
  const parts = [frame(header), frame(body)];
  for (let o = 0; o < pages.length; o += chunk) parts.push(frame(pages.subarray(o, Math.min(o + chunk, pages.length))));
  return { bytes: Buffer.concat(parts), pages, body };
}

describe('EpochStreamReader', () => {
  it('epochs cut at every size come out whole and equal to what was sent', () => {
    const a = epochBytes(0, 37, 3 * 4096);
    const b = epochBytes(1, 0, 4096);
    const c = epochBytes(2, 5, 5 * 4096);
    const all = Buffer.concat([a.bytes, b.bytes, c.bytes]);
    for (const step of [1, 3, 4, 5, 4095, 4096, 65536, all.length]) {
      const r = new EpochStreamReader();
      const got = [];
      for (let o = 0; o < all.length; o += step) got.push(...r.push(all.subarray(o, o + step)));
      r.end();
      expect(got.map((e) => e.header.epoch)).toEqual([0, 1, 2]);
      expect(got[0]!.pages.equals(a.pages)).toBe(true);
      expect(got[0]!.metaBody.equals(a.body)).toBe(true);
      expect(got[1]!.pages.length).toBe(0);
      expect(got[2]!.pages.equals(c.pages)).toBe(true);
      expect(Number(got[2]!.header.requestId)).toBe(9);
      expect(streamedPages(got[0]!).get(42)!.size).toBe(37);
    }
  });

  it('refuses a cut stream, a metadata crc mismatch, a header that disagrees, an oversized chunk, a corrupted page', () => {
    const a = epochBytes(0, 4, 4096);
    const cut = new EpochStreamReader();
    expect(cut.push(a.bytes.subarray(0, a.bytes.length - 10))).toEqual([]);
    expect(() => cut.end()).toThrow(/ended inside an epoch/);

    expect(() => new EpochStreamReader().push(epochBytes(0, 4, 4096, { badCrc: true }).bytes)).toThrow(/metadata of \d+ bytes, crc32/);
    expect(() => new EpochStreamReader().push(epochBytes(0, 4, 4096, { otherId: true }).bytes)).toThrow(/does not match its header/);

    // a page frame longer than the header's chunk size
    const big = epochBytes(0, 4, 8192);
    const hdr = understudy.v1.EpochStreamHeader.decode(big.bytes.subarray(4, 4 + big.bytes.readUInt32LE(0)));
    hdr.chunkBytes = 4096;
    const h2 = frame(understudy.v1.EpochStreamHeader.encode(hdr).finish());
    const rest = big.bytes.subarray(4 + big.bytes.readUInt32LE(0));
    expect(() => new EpochStreamReader().push(Buffer.concat([h2, rest]))).toThrow(/a page frame of 8192 bytes/);

    // a flipped bit in a page: the epoch arrives, its pages fail their crc
    const bad = Buffer.from(a.bytes);
    bad[bad.length - 100] ^= 0x10;
    const [e] = new EpochStreamReader().push(bad);
    expect(() => streamedPages(e!)).toThrow(/page 0x13000 of pid 42 .* fails its crc32/);
  });
});
