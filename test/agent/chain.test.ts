// The agent's epoch chain: epochs in order from a full epoch 0, each with its
// parent; an engine reporting an epoch out of order is refused with E_IMAGE_CHAIN.
import { describe, expect, it } from 'vitest';
import { EpochChain } from '../../src/agent/chain.js';
import type { CheckpointResult } from '../../src/native/engine.js';

function result(epoch: number, full: boolean, over: Partial<CheckpointResult> = {}): CheckpointResult {
  return {
    epoch,
    full,
    epochDir: `/img/epoch-${String(epoch).padStart(6, '0')}`,
    verifyFullEpochDir: '',
    pauseNs: 1e6,
    barrierAtNs: 1e9 + epoch,
    barrierNs: 1e5,
    stateNs: 1e5,
    scanNs: 1e5,
    copyNs: 1e5,
    writeNs: 1e6,
    pages: 3,
    bytes: 3 * 4096,
    processes: 1,
    threads: 1,
    perProcess: [],
    imageId: 'ab'.repeat(16),
    parentEpoch: epoch ? epoch - 1 : 0,
    fsynced: true,
    streamed: false,
    queuedNs: 0,
    epochsInFlight: 0,
    crcNs: 0,
    ioNs: 0,
    syncNs: 0,
    ...over,
  };
}

describe('the epoch chain', () => {
  it('chains epochs from a full epoch 0 and says what the next request continues', () => {
    const c = new EpochChain('/img');
    expect(c.next()).toEqual({ imageDir: '/img', imageId: undefined, epoch: 0, parentEpoch: undefined });
    expect(c.append(result(0, true), 'start')).toMatchObject({ epoch: 0, parent: undefined, full: true, trigger: 'start' });
    expect(c.append(result(1, false), 'interval')).toMatchObject({ epoch: 1, parent: 0, trigger: 'interval' });
    expect(c.next()).toMatchObject({ epoch: 2, parentEpoch: 1 });
    expect(c.last?.epoch).toBe(1);
  });

  it('reserves positions for captures that run ahead of the records, and gives back one that wrote nothing', () => {
    const c = new EpochChain('/img');
    c.append(result(0, true), 'start');
    const p1 = c.reserve();
    const p2 = c.reserve(); // epoch 2 captured while epoch 1 is still being written
    expect([p1.epoch, p1.parentEpoch, p2.epoch, p2.parentEpoch]).toEqual([1, 0, 2, 1]);
    expect(c.ahead).toBe(2);
    c.unreserve(p1); // not the last reserved: kept
    expect(c.next().epoch).toBe(3);
    c.unreserve(p2); // epoch 2 was refused before its barrier
    expect(c.next().epoch).toBe(2);
    c.append(result(1, false), 'interval');
    expect(c.ahead).toBe(0);
    expect(c.reservedDeltas).toBe(1);
  });

  it('refuses an epoch out of order and a delta for epoch 0', () => {
    expect(() => new EpochChain('/img').append(result(0, false), 'start')).toThrow(expect.objectContaining({ code: 'E_IMAGE_CHAIN' }));
    const c = new EpochChain('/img');
    c.append(result(0, true), 'start');
    expect(() => c.append(result(2, false), 'interval')).toThrow(/epoch 2 of \/img where the chain expects epoch 1/);
    expect(() => c.append(result(0, true), 'interval')).toThrow(expect.objectContaining({ code: 'E_IMAGE_CHAIN' }));
    expect(c.epochs).toHaveLength(1);
  });

  it('takes the image id from epoch 0, refuses another image or another parent, and asks for no delta before the id is known', () => {
    const c = new EpochChain('/img');
    const p0 = c.reserve();
    expect(p0).toMatchObject({ epoch: 0, imageId: undefined });
    // epoch 1 before epoch 0's reply named the image: refused, not sent with an empty id
    expect(() => c.reserve()).toThrow(expect.objectContaining({ code: 'E_IMAGE_CHAIN' }));
    c.written(result(0, true), p0);
    expect(c.imageId).toBe('ab'.repeat(16));
    c.append(result(0, true), 'start');
    const p1 = c.reserve();
    expect(p1).toEqual({ imageDir: '/img', imageId: 'ab'.repeat(16), epoch: 1, parentEpoch: 0 });
    expect(() => c.written(result(1, false, { imageId: 'cd'.repeat(16) }), p1)).toThrow(/as image cdcd.*the chain is image abab/);
    expect(() => c.written(result(1, false, { parentEpoch: 3 }), p1)).toThrow(/over parent epoch 3; the chain's parent is epoch 0/);
    expect(() => c.written(result(2, false), p1)).toThrow(/wrote epoch 2 .* asked for epoch 1/);
    expect(() => c.append(result(1, false, { parentEpoch: 3 }), 'interval')).toThrow(expect.objectContaining({ code: 'E_IMAGE_CHAIN' }));
    expect(() => c.append(result(1, false, { imageId: '' }), 'interval')).toThrow(expect.objectContaining({ code: 'E_IMAGE_CHAIN' }));
    expect(c.epochs).toHaveLength(1);
    expect(c.newestWritten).toBe(0);
  });

  it('rewinds to the newest epoch written when the engine that had later captures died', () => {
    const c = new EpochChain('/img');
    c.written(result(0, true), c.reserve());
    c.append(result(0, true), 'start');
    const p1 = c.reserve();
    c.reserve(); // epoch 2, captured, lost with the engine
    c.reserve(); // epoch 3, likewise
    c.written(result(1, false), p1); // written, its record waits for its sinks
    c.rewind();
    // a restarted engine writes epoch 2 (full) over epoch 1
    expect(c.next()).toMatchObject({ epoch: 2, parentEpoch: 1, imageId: 'ab'.repeat(16) });
  });
});
