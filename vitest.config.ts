import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration and lab tests bind real ports and network namespaces; files run in
    // parallel workers but tests inside a file run in order.
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2 } },
    fileParallelism: true,
    reporters: ['default'],
  },
});
