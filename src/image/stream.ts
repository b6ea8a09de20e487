// Reader of the epoch stream (docs/image-format.md, "Epochs as a stream"):
// the engine writes each epoch as frames (4-byte LE length + payload) on a
// file descriptor — an EpochStreamHeader, the EpochMeta (the bytes meta.pb
// frames), then the pages raw in chunks — and the agent reads them here
// without the epoch touching the disk or JSON. Chunks are copied once, into
// the epoch's page buffer; nothing is concatenated as it grows.
import { mkdirSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { crc32 } from 'node:zlib';
import { understudy } from '../gen/proto.js';
import { UnderstudyError } from '../util/errors.js';
import { decodeEpochMetaFile, frameEpochMeta, IMAGE_VERSION, pagesOf, writeEpochDir, type EpochMeta, type PageMap } from './store.js';

export interface StreamedEpoch {
  header: understudy.v1.EpochStreamHeader;
  /** The encoded EpochMeta as sent (meta.pb is these bytes framed: frameEpochMeta). */
  metaBody: Buffer;
  meta: EpochMeta;
  /** pages.bin of the epoch: pages back to back in page-index order. */
  pages: Buffer;
}

/** Largest header or metadata frame accepted (a page index of 1 GiB is ~1 MiB). */
const MAX_META = 256 * 1024 * 1024;

type State = 'header' | 'meta' | 'pages';

export class EpochStreamReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private state: State = 'header';
  private header: understudy.v1.EpochStreamHeader | undefined;
  private metaBody: Buffer | undefined;
  private pages: Buffer | undefined;
  private filled = 0;
  private frameLeft = 0; // bytes of the current page frame still to come

  constructor(private readonly what = 'epoch stream') {}

  /** Feeds bytes; returns the epochs completed by them, in order. */
  push(chunk: Buffer): StreamedEpoch[] {
    if (chunk.length) {
      this.chunks.push(chunk);
      this.have += chunk.length;
    }
    const out: StreamedEpoch[] = [];
    for (;;) {
      if (this.state === 'header' || this.state === 'meta') {
        const f = this.frame();
        if (!f) break;
        if (this.state === 'header') this.onHeader(f);
        else this.onMeta(f);
        continue;
      }
      // pages: frames of raw bytes, copied straight into the epoch's buffer
      const pages = this.pages!;
      if (this.filled === pages.length && this.frameLeft === 0) {
        out.push(this.finish());
        continue;
      }
      if (this.frameLeft === 0) {
        if (this.have < 4) break;
        const len = this.take(4).readUInt32LE(0);
        const chunkBytes = this.header!.chunkBytes;
        if (len === 0 || len > chunkBytes || len > pages.length - this.filled) {
          throw new UnderstudyError(
            'E_FRAME',
            `${this.what}: epoch ${this.header!.epoch}: a page frame of ${len} bytes at byte ${this.filled} of ${pages.length} (chunks are at most ${chunkBytes})`,
          );
        }
        this.frameLeft = len;
      }
      if (this.have === 0) break;
      const n = this.copyInto(pages, this.filled, this.frameLeft);
      this.filled += n;
      this.frameLeft -= n;
    }
    return out;
  }

  /** End of the stream: an epoch cut short is an error. */
  end(): void {
    if (this.have > 0 || this.state !== 'header') {
      throw new UnderstudyError('E_FRAME', `${this.what}: ended inside an epoch (${this.state}, ${this.have} bytes left over)`);
    }
  }

  private frame(): Buffer | undefined {
    if (this.have < 4) return undefined;
    const len = this.peek4();
    if (len > MAX_META) throw new UnderstudyError('E_FRAME', `${this.what}: a ${this.state} frame claims ${len} bytes, above ${MAX_META}`);
    if (this.have < 4 + len) return undefined;
    this.take(4);
    return this.take(len);
  }

  private onHeader(f: Buffer): void {
    let h: understudy.v1.EpochStreamHeader;
    try {
      h = understudy.v1.EpochStreamHeader.decode(f);
    } catch (e) {
      throw new UnderstudyError('E_FRAME', `${this.what}: cannot decode an EpochStreamHeader (${(e as Error).message})`);
    }
    if (h.version !== IMAGE_VERSION) {
      throw new UnderstudyError('E_VERSION', `${this.what}: epoch stream version ${h.version} is not supported (this build reads ${IMAGE_VERSION})`);
    }
    if (h.chunkBytes <= 0) throw new UnderstudyError('E_FRAME', `${this.what}: epoch ${h.epoch}: chunk size 0`);
    this.header = h;
    this.state = 'meta';
  }

  private onMeta(f: Buffer): void {
    const h = this.header!;
    if (f.length !== h.metaBytes || crc32(f) !== h.metaCrc32) {
      throw new UnderstudyError(
        'E_IMAGE_CORRUPT',
        `${this.what}: epoch ${h.epoch}: metadata of ${f.length} bytes, crc32 ${crc32(f)}; the header says ${h.metaBytes} bytes, crc32 ${h.metaCrc32}`,
      );
    }
    this.metaBody = f;
    this.pages = Buffer.allocUnsafe(Number(h.pagesBytes));
    this.filled = 0;
    this.frameLeft = 0;
    this.state = 'pages';
  }

  private finish(): StreamedEpoch {
    const h = this.header!;
    const metaBody = this.metaBody!;
    const meta = decodeEpochMetaFile(frameEpochMeta(metaBody), `${this.what} epoch ${h.epoch}`);
    if (meta.epoch !== h.epoch || meta.imageId !== h.imageId || Number(meta.pagesBytes) !== Number(h.pagesBytes)) {
      throw new UnderstudyError(
        'E_IMAGE_CORRUPT',
        `${this.what}: epoch ${h.epoch}: the metadata (epoch ${meta.epoch}, image ${meta.imageId}) does not match its header`,
      );
    }
    const e: StreamedEpoch = { header: h, metaBody, meta, pages: this.pages! };
    this.header = undefined;
    this.metaBody = undefined;
    this.pages = undefined;
    this.state = 'header';
    return e;
  }

  private peek4(): number {
    if (this.chunks[0]!.length >= 4) return this.chunks[0]!.readUInt32LE(0);
    const b = Buffer.alloc(4);
    this.copyInto(b, 0, 4, false);
    return b.readUInt32LE(0);
  }

  /** n buffered bytes as one Buffer (n <= have). */
  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (first && first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.have -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyInto(out, 0, n);
    return out;
  }

  /** Copies up to n buffered bytes into dst at off (consuming them unless peeking); the count. */
  private copyInto(dst: Buffer, off: number, n: number, consume = true): number {
    let done = 0;
    let i = 0;
    while (done < n && i < this.chunks.length) {
      const c = this.chunks[i]!;
      const k = Math.min(c.length, n - done);
      c.copy(dst, off + done, 0, k);
      done += k;
      if (consume) {
        if (k === c.length) this.chunks.shift();
        else {
          this.chunks[0] = c.subarray(k);
          i++;
        }
      } else i++;
    }
    if (consume) this.have -= done;
    return done;
  }
}

/** Every page of a streamed epoch, crc-checked: pid -> address -> page. */
export function streamedPages(e: StreamedEpoch): Map<number, PageMap> {
  return pagesOf(e.meta, e.pages, `epoch ${e.header.epoch} from the stream`);
}

/**
 * Stores a streamed epoch in an image directory as the engine's directory
 * sink would have (epoch-NNNNNN/, written atomically): a standby's store.
 */
export function storeStreamedEpoch(dir: string, e: StreamedEpoch): string {
  const name = `epoch-${String(e.header.epoch).padStart(6, '0')}`;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  return writeEpochDir(dir, name, frameEpochMeta(e.metaBody), [e.pages]);
}

/** Calls `onEpoch` for every epoch read from `stream`, `onError` on a bad stream. */
export function readEpochStream(stream: Readable, onEpoch: (e: StreamedEpoch) => void, onError: (e: Error) => void): void {
  const r = new EpochStreamReader();
  stream.on('data', (chunk: Buffer) => {
    try {
      for (const e of r.push(chunk)) onEpoch(e);
    } catch (e) {
      stream.destroy();
      onError(e as Error);
    }
  });
  stream.on('end', () => {
    try {
      r.end();
    } catch (e) {
      onError(e as Error);
    }
  });
}
