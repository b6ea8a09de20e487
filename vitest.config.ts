import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Tests use real processes, namespaces and eBPF programs: separate
    // processes, and generous timeouts for a shared 2-core machine.
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
