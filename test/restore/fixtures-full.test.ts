// Every restore fixture, full checkpoint -> kill -> restore (same pids) -> PASS.
import { afterEach, describe, it } from 'vitest';
import { runCleanups } from './helpers.js';
import { FIXTURES, roundTrip } from './roundtrip.js';

afterEach(runCleanups);

describe('restore fixtures, same node, full checkpoint', () => {
  for (const name of FIXTURES) {
    it(`${name}: full checkpoint -> kill -> restore -> PASS`, async () => roundTrip(name, 0));
  }
});
