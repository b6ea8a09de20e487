// When the next epoch is due. Today: a target interval (measured from the end
// of the epoch before, so epochs never overlap) and an optional number of
// deltas after which the schedule is done; explicit requests go through
// ProtectLoop.requestEpoch. A dirty-bytes budget and output held for commit
// are the next triggers: each is one more reason here, read by the loop.
import { UnderstudyError } from '../util/errors.js';

export interface Schedule {
  /** Target time between epochs; undefined: epochs on explicit request only. */
  intervalMs?: number;
  /** Stop scheduling after this many deltas (epoch 0 not counted); undefined: until stopped. */
  maxDeltas?: number;
}

export function checkSchedule(s: Schedule): Schedule {
  if (s.intervalMs !== undefined && !(Number.isFinite(s.intervalMs) && s.intervalMs > 0)) {
    throw new UnderstudyError('E_USAGE', `the epoch interval must be a positive number of milliseconds, got ${s.intervalMs}`);
  }
  if (s.maxDeltas !== undefined && !(Number.isInteger(s.maxDeltas) && s.maxDeltas >= 0)) {
    throw new UnderstudyError('E_USAGE', `the number of delta epochs must be a non-negative integer, got ${s.maxDeltas}`);
  }
  return s;
}

/** Whether the schedule has taken all it was asked for, given the deltas taken so far. */
export function scheduleDone(s: Schedule, deltas: number): boolean {
  return s.maxDeltas !== undefined && deltas >= s.maxDeltas;
}

/** Milliseconds until the next scheduled epoch, or undefined when none is scheduled. */
export function nextEpochIn(s: Schedule, deltas: number): number | undefined {
  if (s.intervalMs === undefined || scheduleDone(s, deltas)) return undefined;
  return s.intervalMs;
}
