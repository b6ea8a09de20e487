// The change log on its own: a change belongs to the epoch whose barrier comes
// after it, by time, whenever it is logged (events of the app are decoded after
// the barrier's reply, while the engine writes); a run of writes merged across
// a barrier is named on both sides; what was forgotten is refused, not given short.
import { describe, expect, it } from 'vitest';
import { ChangeLog } from '../../src/graph/changes.js';

const name = (id: string): string => `/path/of/${id}`;
const files = (log: ChangeLog, since: number, upTo?: number): string[] =>
  log.dirtySet(since, upTo, name).files.map((f) => `${f.path} ${f.ranges.map((r) => r.join('-')).join(',')}`);

describe('the change log', () => {
  it('places changes by their time, not by when they are logged', () => {
    const log = new ChangeLog(1000);
    log.log({ k: 'process', pid: 7, change: 'created' }, 1500); // before barrier 0: in the full epoch
    log.mark(0, 2000); // the real barrier 0 replaces the log's creation
    log.log({ k: 'write', resource: 'a', start: 0, end: 10 }, 2500);
    // barrier 1 at 3000 is known only after an event stamped 3100 was logged
    log.log({ k: 'write', resource: 'b', start: 0, end: 5 }, 3100);
    expect(log.mark(undefined, 3000)).toBe(1);
    // and an event stamped before barrier 1, decoded late
    log.log({ k: 'write', resource: 'c', start: 4, end: 8 }, 2900);
    expect(log.dirtySet(0, 1, name).processes).toEqual([]);
    expect(files(log, 0, 1)).toEqual(['/path/of/a 0-10', '/path/of/c 4-8']);
    expect(files(log, 1)).toEqual(['/path/of/b 0-5']);
    expect(log.dirtySet(1, undefined, name)).toMatchObject({ since: 1, epoch: 1 });
  });

  it('a run of writes merged across a barrier is named in both epochs', () => {
    const log = new ChangeLog(0);
    log.mark(0, 100);
    log.logWrite('f', 0, 4096, 150);
    log.logWrite('f', 4096, 8192, 250); // the same run, after barrier 1 (not marked yet)
    log.mark(1, 200);
    log.logWrite('f', 100_000, 100_001, 260); // not touching: a change of its own
    expect(log.size).toBe(2);
    expect(files(log, 0, 1)).toEqual(['/path/of/f 0-8192']);
    expect(files(log, 1)).toEqual(['/path/of/f 0-8192,100000-100001']);
  });

  it('marks go forward; forget drops what came before a barrier and refuses older dirty sets', () => {
    const log = new ChangeLog(0);
    log.mark(0, 100);
    log.log({ k: 'thread', pid: 1, tid: 2, change: 'created' }, 150);
    log.mark(1, 200);
    log.log({ k: 'thread', pid: 1, tid: 3, change: 'created' }, 250);
    expect(() => log.mark(1, 300)).toThrow(/marks go forward/);
    expect(() => log.mark(2, 150)).toThrow(/marks go forward/);
    expect(() => log.dirtySet(5, undefined, name)).toThrow(/never marked/);
    log.forget(1);
    expect(log.size).toBe(1);
    expect(log.dirtySet(1, undefined, name).threads).toEqual([{ pid: 1, tid: 3, change: 'created' }]);
    expect(() => log.dirtySet(0, undefined, name)).toThrow(/forgotten/);
    // a graph never marked counts its creation as barrier 0
    const fresh = new ChangeLog(10);
    fresh.log({ k: 'thread', pid: 1, tid: 4, change: 'exited' }, 20);
    expect(fresh.epoch).toBe(0);
    expect(fresh.dirtySet(0, undefined, name).threads).toHaveLength(1);
  });
});
