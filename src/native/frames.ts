// Length-prefixed frames: a 4-byte little-endian length, then that many bytes
// of one protobuf message. The same framing is used by every native binary
// (native/common/frame.c) and, later, by image files and node-to-node messages.
import { UnderstudyError } from '../util/errors.js';

/** Largest frame a reader accepts unless told otherwise (64 MiB). */
export const DEFAULT_MAX_FRAME = 64 * 1024 * 1024;

export function encodeFrame(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(4 + payload.length);
  out.writeUInt32LE(payload.length, 0);
  out.set(payload, 4);
  return out;
}

/**
 * Splits a complete buffer into frames. Refuses a length above `maxFrame` and a
 * trailing partial frame: a stream that ends mid-frame is corrupt, not short.
 */
export function decodeFrames(buf: Uint8Array, maxFrame = DEFAULT_MAX_FRAME, what = 'stream'): Uint8Array[] {
  const frames: Uint8Array[] = [];
  let off = 0;
  const view = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  while (off < view.length) {
    if (view.length - off < 4) {
      throw new UnderstudyError('E_FRAME', `${what}: ends inside a frame header at byte ${off} (${view.length - off} of 4 bytes)`);
    }
    const len = view.readUInt32LE(off);
    if (len > maxFrame) {
      throw new UnderstudyError('E_FRAME', `${what}: frame at byte ${off} claims ${len} bytes, above the limit of ${maxFrame}`);
    }
    if (view.length - off - 4 < len) {
      throw new UnderstudyError('E_FRAME', `${what}: frame at byte ${off} claims ${len} bytes but only ${view.length - off - 4} follow (truncated)`);
    }
    frames.push(view.subarray(off + 4, off + 4 + len));
    off += 4 + len;
  }
  return frames;
}

/**
 * Incremental decoder for a stream (a pipe from an engine): push chunks, take
 * whole frames as they complete.
 */
export class FrameDecoder {
  private pending: Buffer = Buffer.alloc(0);

  constructor(
    private readonly maxFrame = DEFAULT_MAX_FRAME,
    private readonly what = 'stream',
  ) {}

  push(chunk: Uint8Array): Uint8Array[] {
    this.pending = this.pending.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.pending, chunk]);
    const out: Uint8Array[] = [];
    for (;;) {
      if (this.pending.length < 4) break;
      const len = this.pending.readUInt32LE(0);
      if (len > this.maxFrame) {
        throw new UnderstudyError('E_FRAME', `${this.what}: frame claims ${len} bytes, above the limit of ${this.maxFrame}`);
      }
      if (this.pending.length < 4 + len) break;
      out.push(this.pending.subarray(4, 4 + len));
      this.pending = this.pending.subarray(4 + len);
    }
    return out;
  }

  /** Bytes received that do not yet form a whole frame. */
  get buffered(): number {
    return this.pending.length;
  }

  /** Call at end of stream: a leftover partial frame is an error. */
  end(): void {
    if (this.pending.length > 0) {
      throw new UnderstudyError('E_FRAME', `${this.what}: ended inside a frame (${this.pending.length} bytes left over)`);
    }
  }
}

/** Refuse a message version this build does not know. */
export function requireVersion(what: string, got: number, known: number): void {
  if (got !== known) {
    throw new UnderstudyError(
      'E_VERSION',
      `${what}: message version ${got} is not supported (this build speaks version ${known}); ` + 'run the same Understudy version on both ends',
    );
  }
}
