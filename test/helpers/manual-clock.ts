import type { Clock, TickHandler } from '../../src/clock.js';

// A clock the test moves by hand: now() is what the test set, and each advance() runs
// every subscriber once with the new time, as the shared ticker would.

export class ManualClock {
  readonly periodMs: number;
  readonly #handlers = new Set<TickHandler>();
  #now: number;

  constructor(startMs = Date.now(), periodMs = 250) {
    this.#now = startMs;
    this.periodMs = periodMs;
  }

  now(): number {
    return this.#now;
  }

  preciseNow(): number {
    return performance.now();
  }

  subscribe(handler: TickHandler): () => void {
    this.#handlers.add(handler);
    return () => this.#handlers.delete(handler);
  }

  get subscribers(): number {
    return this.#handlers.size;
  }

  /** Moves time on by `ms` and ticks once. */
  advance(ms: number): void {
    this.#now += ms;
    for (const handler of [...this.#handlers]) handler(this.#now);
  }

  /** This object where the code under test wants the real Clock (same public shape). */
  asClock(): Clock {
    return this as unknown as Clock;
  }
}
