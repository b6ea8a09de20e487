// Loaded by vitest before every test file (vitest.config.ts setupFiles): what
// a file registered for cleanup and did not clean itself is undone after its
// last test, even when a test failed.
import { afterAll } from 'vitest';
import { runCleanups } from './cleanup.js';

afterAll(runCleanups);
