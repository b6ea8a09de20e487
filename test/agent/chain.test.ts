// The agent's epoch chain: epochs in order from a full epoch 0, each with its
// parent; an engine reporting an epoch out of order is refused with E_IMAGE_CHAIN.
import { describe, expect, it } from 'vitest';
import { EpochChain } from '../../src/agent/chain.js';
import type { CheckpointResult } from '../../src/native/engine.js';

function result(epoch: number, full: boolean): CheckpointResult {
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
});
