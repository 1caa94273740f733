// One coarse shared ticker for every deadline in the process (idle timeouts, heartbeat
// schedules, pool maxIdle), instead of a timer per socket, and the one source of time on
// the data path: now() (wall clock, coarse) for deadlines and timestamps, preciseNow()
// (monotonic) for measurements. Subscribers are called once per tick with the current
// time; the timer runs only while someone is subscribed, and is unref'd so it never
// holds the process.
//
// Deadlines read against now() are good to one period: a timestamp taken between ticks
// carries the last tick's time, and a check runs on the next tick.
//
// Tests pass a ManualClock instead and move time with advance(ms): ticks fire in order,
// at each period boundary, with no sleeping and no real timer.

export type TickHandler = (nowMs: number) => void;

/** Where a Clock reads time and gets its ticker from. */
export interface TimeSource {
  /** Wall-clock ms (Date.now()). */
  wallNow(): number;
  /** Monotonic ms for measurements (performance.now()). */
  preciseNow(): number;
  /** Calls `tick` every `periodMs` until the returned stop is called; must not hold the process. */
  every(periodMs: number, tick: () => void): () => void;
}

/** The process's own time: the only place on the data path that reads the system clock. */
const SYSTEM_TIME: TimeSource = {
  wallNow: () => Date.now(),
  preciseNow: () => performance.now(),
  every(periodMs, tick) {
    const timer = setInterval(tick, periodMs);
    timer.unref();
    return () => clearInterval(timer);
  },
};

export class Clock {
  readonly #periodMs: number;
  readonly #source: TimeSource;
  readonly #handlers = new Set<TickHandler>();
  #stopTicker: (() => void) | null = null;
  #now: number;
  #previousTickAt: number;

  constructor(periodMs = 250, source: TimeSource = SYSTEM_TIME) {
    this.#periodMs = periodMs;
    this.#source = source;
    this.#now = this.#previousTickAt = source.wallNow();
  }

  /** Coarse now: updated every tick while the ticker runs (good to about one period); read afresh when it does not. */
  now(): number {
    return this.#stopTicker ? this.#now : this.#source.wallNow();
  }

  /** Exact wall-clock now, for the rare report of an age (listings): a late tick must not make it young. Deadlines use now(). */
  exactNow(): number {
    return this.#source.wallNow();
  }

  /** Exact monotonic now, for measurements (RTT, connect time); not comparable with now(). */
  preciseNow(): number {
    return this.#source.preciseNow();
  }

  get periodMs(): number {
    return this.#periodMs;
  }

  /**
   * When the tick before the current one came (while the ticker runs): a timestamp at or past it
   * was taken since then, at any moment up to now, however late this tick came.
   */
  get previousTickAt(): number {
    return this.#previousTickAt;
  }

  /** Whether the ticker runs (someone is subscribed). */
  get ticking(): boolean {
    return this.#stopTicker !== null;
  }

  subscribe(handler: TickHandler): () => void {
    this.#handlers.add(handler);
    if (!this.#stopTicker) {
      this.#now = this.#previousTickAt = this.#source.wallNow();
      this.#stopTicker = this.#source.every(this.#periodMs, () => this.#tick());
    }
    return () => {
      this.#handlers.delete(handler);
      if (this.#handlers.size === 0 && this.#stopTicker) {
        this.#stopTicker();
        this.#stopTicker = null;
      }
    };
  }

  #tick(): void {
    this.#previousTickAt = this.#now;
    this.#now = this.#source.wallNow();
    for (const handler of this.#handlers) handler(this.#now);
  }
}

/** Time that moves only when told: the ticker's ticks fire inside advance(). */
class ManualTime implements TimeSource {
  #elapsedMs = 0;
  readonly #startMs: number;
  readonly #tickers = new Set<{ periodMs: number; dueMs: number; tick: () => void }>();

  constructor(startMs: number) {
    this.#startMs = startMs;
  }

  wallNow(): number {
    return this.#startMs + this.#elapsedMs;
  }

  preciseNow(): number {
    return this.#elapsedMs;
  }

  every(periodMs: number, tick: () => void): () => void {
    const ticker = { periodMs, dueMs: this.#elapsedMs + periodMs, tick };
    this.#tickers.add(ticker);
    return () => this.#tickers.delete(ticker);
  }

  advance(ms: number): void {
    const targetMs = this.#elapsedMs + ms;
    for (;;) {
      let next: { periodMs: number; dueMs: number; tick: () => void } | null = null;
      for (const ticker of this.#tickers) if (ticker.dueMs <= targetMs && (!next || ticker.dueMs < next.dueMs)) next = ticker;
      if (!next) break;
      this.#elapsedMs = next.dueMs;
      next.dueMs += next.periodMs;
      next.tick();
    }
    this.#elapsedMs = targetMs;
  }
}

/** A Clock for tests: time starts at `startMs` (wall) and 0 (precise), and moves only by advance(). */
export class ManualClock extends Clock {
  readonly #time: ManualTime;

  constructor(periodMs = 250, startMs = 1_000_000) {
    const time = new ManualTime(startMs);
    super(periodMs, time);
    this.#time = time;
  }

  /** Moves time forward by `ms`, firing every tick that falls due on the way, in order. */
  advance(ms: number): void {
    this.#time.advance(ms);
  }
}
