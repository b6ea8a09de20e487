import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Tests use real processes, namespaces and eBPF programs: separate
    // processes, and generous timeouts for a shared 2-core machine.
    pool: 'forks',
    // Two files at a time, one per core (the machine CI runs on has 2; vitest's
    // default there, cores - 1, ran one file after another).
    // Files can share the machine because each one keeps to its own
    // resources: temporary folders from mkdtemp, network namespaces named
    // after the test process's pid with address ranges claimed per cluster
    // (test/helpers/nodes.ts), tracer pins per app id, processes it started
    // itself (test/helpers/cleanup.ts undoes them all). A restore needs its
    // pids free: the kernel hands out pids in order, so a pid freed by a dump
    // comes round again only after pid_max (32768 here) more forks.
    // What is machine-wide and can be held by one test at a time (the demo's
    // /var/lib/understudy/demo) lives in a single file. Within a file, tests
    // run one after another.
    fileParallelism: true,
    maxWorkers: 2,
    // (vitest starts the files that took longest in the last run first, so
    // the two workers finish close together)
    setupFiles: ['test/helpers/setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
