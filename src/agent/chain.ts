// The epoch chain of one app as the agent keeps it: which image it is, which
// epochs were taken, and what the next checkpoint must continue. The agent,
// not the engine, is the owner: an epoch the engine reports out of order is
// refused here (E_IMAGE_CHAIN), and the next request is built from this state.
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
  /**
   * The image's id. Today the engine makes it at epoch 0 and keeps it in its
   * memory; once CheckpointCmd carries it (with parentEpoch), the agent sends
   * both, and an engine restarted by the agent continues the chain.
   */
  imageId: string | undefined;
  /** The epoch this checkpoint is to write. */
  epoch: number;
  /** The epoch it continues (epoch - 1); undefined for epoch 0. */
  parentEpoch: number | undefined;
}

export class EpochChain {
  readonly epochs: EpochRecord[] = [];
  imageId: string | undefined;
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
    this.reservedNext++;
    return pos;
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

  /** Records the engine's result as the chain's next epoch; refuses one out of order. */
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
