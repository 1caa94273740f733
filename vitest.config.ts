import { defineConfig } from 'vitest/config';
import { testForks } from './test/helpers/forks.js';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration and lab tests bind real ports and network namespaces; files run in
    // parallel workers (4 by default: they mostly wait on timers; the lab, whose figures
    // are wall-clock, runs 2) but tests inside a file run in order.
    pool: 'forks',
    poolOptions: { forks: { maxForks: testForks() } },
    fileParallelism: true,
    reporters: ['default'],
  },
});
