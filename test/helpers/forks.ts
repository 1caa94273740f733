// How many test files run at once (vitest's forks); the port helper gives each its own
// slice. Most files wait on real timers (idle timeouts, heartbeats) rather than compute,
// so more forks than cores shortens the suite. KP_TEST_FORKS overrides the default.
export const DEFAULT_TEST_FORKS = 4;

export function testForks(env: NodeJS.ProcessEnv = process.env): number {
  const forks = Number(env['KP_TEST_FORKS'] ?? DEFAULT_TEST_FORKS);
  return Number.isInteger(forks) && forks > 0 ? forks : DEFAULT_TEST_FORKS;
}
