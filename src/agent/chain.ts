// The epoch chain of one app as the agent keeps it: which image it is, which
// epochs were taken, and what the next checkpoint must continue. The agent,
// not the engine, is the owner: every request is built from this state (image
// id, epoch, parent epoch), so an engine the agent restarts continues the
// chain; an epoch the engine reports out of order, over another parent or of
// another image is refused here (E_IMAGE_CHAIN).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { readEpochMeta } from '../image/store.js';
import type { CheckpointResult } from '../native/engine.js';
import { UnderstudyError } from '../util/errors.js';

/** What an epoch's schedule said: the first epoch, the interval, or an explicit request. */
export type EpochTrigger = 'start' | 'interval' | 'request';

/** One epoch as the agent records it. */
export interface EpochRecord {
  epoch: number;
  /** The epoch this delta applies to; undefined for epoch 0. */
  parent: number | undefined;
  full: boolean;
  trigger: EpochTrigger;
  /** Where the engine wrote it. */
  epochDir: string;
  /** CLOCK_MONOTONIC (ns) when the barrier began. */
  barrierAtNs: number;
  /** The app's pause: barrier + capture. */
  pauseNs: number;
  barrierNs: number;
  copyNs: number;
  /** After the release, off the app's critical path. */
  writeNs: number;
  pages: number;
  bytes: number;
  processes: number;
  threads: number;
}

/** What the next checkpoint request continues. */
export interface ChainPosition {
  imageDir: string;
  /** The image's id (32 hex digits); undefined only for epoch 0 of a new image (the engine picks it). */
  imageId: string | undefined;
  /** The epoch this checkpoint is to write. */
  epoch: number;
  /** The epoch it continues (epoch - 1); undefined for epoch 0. */
  parentEpoch: number | undefined;
}

const IMAGE_ID = /^[0-9a-f]{32}$/;

export class EpochChain {
  readonly epochs: EpochRecord[] = [];
  /** Set by epoch 0's result; every later epoch must carry it. */
  imageId: string | undefined;
  /**
   * The newest epoch the engine reported written (its reply came back), which
   * may be ahead of the records (those wait for the epochs before them to be
   * handled): what a restarted engine continues. -1: none.
   */
  private writtenNewest = -1;
  /**
   * The epoch the next capture takes. Captures run ahead of the records: the
   * next barrier may come while the engine still writes the epoch before
   * (whose record comes with its reply), so positions are reserved in order.
   */
  private reservedNext = 0;

  constructor(readonly imageDir: string) {}

  get last(): EpochRecord | undefined {
    return this.epochs[this.epochs.length - 1];
  }

  /** The position the next capture would take. */
  next(): ChainPosition {
    const epoch = this.reservedNext;
    return { imageDir: this.imageDir, imageId: this.imageId, epoch, parentEpoch: epoch === 0 ? undefined : epoch - 1 };
  }

  /** Takes the next position for a capture under way. */
  reserve(): ChainPosition {
    const pos = this.next();
    if (pos.epoch > 0 && pos.imageId === undefined) {
      // epoch 0's reply names the image; no delta is asked for before it
      throw new UnderstudyError('E_IMAGE_CHAIN', `epoch ${pos.epoch} of ${this.imageDir} asked for before epoch 0 named the image`);
    }
    this.reservedNext++;
    return pos;
  }

  /**
   * An engine reported this epoch written: checks it against the chain (the
   * position asked for, the image, the parent), takes the image id from
   * epoch 0, and remembers it as the newest written. Refuses with
   * E_IMAGE_CHAIN what does not follow; the reply's epoch is then not the
   * chain's.
   */
  written(r: CheckpointResult, asked: ChainPosition): void {
    const where = this.imageDir;
    if (r.epoch !== asked.epoch) {
      throw new UnderstudyError('E_IMAGE_CHAIN', `the engine wrote epoch ${r.epoch} of ${where} where the agent asked for epoch ${asked.epoch}`);
    }
    if (!IMAGE_ID.test(r.imageId)) {
      throw new UnderstudyError('E_IMAGE_CHAIN', `the engine wrote epoch ${r.epoch} of ${where} with image id "${r.imageId}", not 32 hex digits`);
    }
    if (asked.epoch === 0) this.imageId ??= r.imageId;
    if (this.imageId !== r.imageId) {
      throw new UnderstudyError(
        'E_IMAGE_CHAIN',
        `the engine wrote epoch ${r.epoch} of ${where} as image ${r.imageId}; the chain is image ${this.imageId ?? 'none'}`,
      );
    }
    if (asked.parentEpoch !== undefined && r.parentEpoch !== asked.parentEpoch) {
      throw new UnderstudyError(
        'E_IMAGE_CHAIN',
        `the engine wrote epoch ${r.epoch} of ${where} over parent epoch ${r.parentEpoch}; the chain's parent is epoch ${asked.parentEpoch}`,
      );
    }
    this.writtenNewest = Math.max(this.writtenNewest, r.epoch);
  }

  /**
   * The epoch at `pos` as an engine that died before its reply left it: in
   * place in the image directory (renamed whole, so complete), of this image,
   * over the parent asked for. Its figures are what meta.pb keeps (pages,
   * pause, processes, the capture's wall time); the rest are 0. Undefined when
   * it is not there; E_IMAGE_CHAIN when something else is in its place.
   */
  writtenWithoutReply(pos: ChainPosition): CheckpointResult | undefined {
    const dir = join(this.imageDir, `epoch-${String(pos.epoch).padStart(6, '0')}`);
    if (pos.imageId === undefined || !existsSync(join(dir, 'meta.pb'))) return undefined;
    const m = readEpochMeta(dir);
    if (m.epoch !== pos.epoch || m.imageId !== pos.imageId || (pos.parentEpoch !== undefined && m.parentEpoch !== pos.parentEpoch)) {
      throw new UnderstudyError(
        'E_IMAGE_CHAIN',
        `${dir} is epoch ${m.epoch} of image ${m.imageId} over epoch ${m.parentEpoch}, not epoch ${pos.epoch} of image ${pos.imageId} over epoch ${pos.parentEpoch ?? 'none'}`,
      );
    }
    const pageSize = m.pageSize || 4096;
    // 64-bit fields may decode as Long
    const pagesBytes = Number(m.pagesBytes);
    const timeUnixNs = Number(m.timeUnixNs);
    // the capture's time on the wall clock, as CLOCK_MONOTONIC (the trace events' clock), give or take the gap between the two reads
    const barrierAtNs = timeUnixNs > 0 ? Math.max(0, timeUnixNs - (Date.now() * 1e6 - Number(process.hrtime.bigint()))) : 0;
    return {
      epoch: m.epoch,
      full: m.full,
      epochDir: dir,
      verifyFullEpochDir: '',
      pauseNs: Number(m.pauseNs),
      barrierAtNs,
      barrierNs: 0,
      stateNs: 0,
      scanNs: 0,
      copyNs: 0,
      writeNs: 0,
      pages: Math.floor(pagesBytes / pageSize),
      bytes: pagesBytes,
      processes: m.processes.length,
      threads: m.processes.reduce((n, p) => n + (p.threads?.length ?? 0), 0),
      perProcess: [],
      imageId: m.imageId,
      parentEpoch: m.parentEpoch,
      fsynced: false,
      streamed: false,
      queuedNs: 0,
      epochsInFlight: 0,
      crcNs: 0,
      ioNs: 0,
      syncNs: 0,
    };
  }

  /** The newest epoch an engine reported written (-1: none). */
  get newestWritten(): number {
    return this.writtenNewest;
  }

  /**
   * The engine died: the captures it had not written are lost, so the next
   * capture continues from the newest epoch written (a restarted engine
   * finds it as the newest in the image directory).
   */
  rewind(): void {
    this.reservedNext = this.writtenNewest + 1;
  }

  /** Gives back the last position reserved, for a capture that wrote nothing (refused before its barrier, or busy). */
  unreserve(pos: ChainPosition): void {
    if (pos.epoch === this.reservedNext - 1 && pos.epoch > (this.last?.epoch ?? -1)) this.reservedNext--;
  }

  /** Positions reserved beyond the records (captures under way or being written). */
  get ahead(): number {
    return this.reservedNext - this.epochs.length;
  }

  /** Deltas reserved so far (epoch 0 not counted). */
  get reservedDeltas(): number {
    return Math.max(0, this.reservedNext - 1);
  }

  /**
   * Records the engine's result as the chain's next epoch; refuses (E_IMAGE_CHAIN)
   * one out of order, over another parent, or of another image. Epoch 0 names
   * the image.
   */
  append(r: CheckpointResult, trigger: EpochTrigger): EpochRecord {
    const parent = this.last?.epoch;
    const want = parent === undefined ? 0 : parent + 1;
    if (r.epoch !== want) {
      throw new UnderstudyError(
        'E_IMAGE_CHAIN',
        `the engine wrote epoch ${r.epoch} of ${this.imageDir} where the chain expects epoch ${want}; the chain stops at epoch ${parent ?? 'none'}`,
      );
    }
    if (parent === undefined && !r.full) {
      throw new UnderstudyError('E_IMAGE_CHAIN', `the engine wrote epoch 0 of ${this.imageDir} as a delta: an image starts with a full epoch`);
    }
    if (parent !== undefined && r.parentEpoch !== parent) {
      throw new UnderstudyError(
        'E_IMAGE_CHAIN',
        `the engine wrote epoch ${r.epoch} of ${this.imageDir} over parent epoch ${r.parentEpoch}; the chain's newest epoch is ${parent}`,
      );
    }
    if (!IMAGE_ID.test(r.imageId) || (this.imageId !== undefined && r.imageId !== this.imageId)) {
      throw new UnderstudyError(
        'E_IMAGE_CHAIN',
        `the engine wrote epoch ${r.epoch} of ${this.imageDir} as image "${r.imageId}"; the chain is image ${this.imageId ?? '(none yet)'}`,
      );
    }
    this.imageId ??= r.imageId;
    this.writtenNewest = Math.max(this.writtenNewest, r.epoch);
    const rec: EpochRecord = {
      epoch: r.epoch,
      parent,
      full: r.full,
      trigger,
      epochDir: r.epochDir,
      barrierAtNs: r.barrierAtNs,
      pauseNs: r.pauseNs,
      barrierNs: r.barrierNs,
      copyNs: r.copyNs,
      writeNs: r.writeNs,
      pages: r.pages,
      bytes: r.bytes,
      processes: r.processes,
      threads: r.threads,
    };
    this.epochs.push(rec);
    this.reservedNext = Math.max(this.reservedNext, rec.epoch + 1);
    return rec;
  }
}
