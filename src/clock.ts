// One coarse shared ticker for every deadline in the process (idle timeouts, heartbeat
// schedules, pool maxIdle), instead of a timer per socket. Subscribers are called once
// per tick with the current time; the timer is unref'd so it never holds the process.

export type TickHandler = (nowMs: number) => void;

export class Clock {
  readonly #periodMs: number;
  readonly #handlers = new Set<TickHandler>();
  #timer: NodeJS.Timeout | null = null;
  #now = Date.now();

  constructor(periodMs = 250) {
    this.#periodMs = periodMs;
  }

  /** Coarse now: updated every tick, good to about one period. */
  now(): number {
    return this.#now;
  }

  /** Exact now, for measurements (RTT, connect time). */
  preciseNow(): number {
    return performance.now();
  }

  get periodMs(): number {
    return this.#periodMs;
  }

  subscribe(handler: TickHandler): () => void {
    this.#handlers.add(handler);
    if (!this.#timer) {
      this.#now = Date.now();
      this.#timer = setInterval(() => this.#tick(), this.#periodMs);
      this.#timer.unref();
    }
    return () => {
      this.#handlers.delete(handler);
      if (this.#handlers.size === 0 && this.#timer) {
        clearInterval(this.#timer);
        this.#timer = null;
      }
    };
  }

  #tick(): void {
    this.#now = Date.now();
    for (const handler of this.#handlers) handler(this.#now);
  }
}
