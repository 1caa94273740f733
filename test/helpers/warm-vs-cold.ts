import { until } from './wait.js';

// The warm-pool comparison of the TLS tests: the same first exchange timed through a
// route without spares and through one with spares, alternately, the warm route's pool
// refilled before each of its rounds. Medians, so one slow round on a loaded machine
// does not decide.

export interface WarmVsCold {
  readonly coldMs: number;
  readonly warmMs: number;
}

export async function warmVsCold(options: {
  rounds: number;
  /** Connects and does the first exchange through `port`; resolves with the elapsed ms. */
  timed(port: number): Promise<number>;
  coldPort: number;
  warmPort: number;
  /** True once the warm route's pool is full again. */
  refilled(): Promise<boolean>;
}): Promise<WarmVsCold> {
  const colds: number[] = [];
  const warms: number[] = [];
  for (let i = 0; i < options.rounds; i++) {
    colds.push(await options.timed(options.coldPort));
    await until(options.refilled, 10_000, 'the pool refilled');
    warms.push(await options.timed(options.warmPort));
  }
  return { coldMs: median(colds), warmMs: median(warms) };
}

function median(values: number[]): number {
  return [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
}
