// The idle-timeout search, as a pure planner with no sockets and no clock: it says which
// idle durations to try next and narrows the bracket from the outcomes it is told.
//
// Every canary is a connection left idle for one duration and then probed. Canaries run
// in parallel, so the planner keeps up to `parallel` of them in flight and places each
// new one where it splits the widest unknown gap: on a log scale while nothing has died
// yet (the timeout may be anywhere up to `maxMs`), linearly once a death bounds it. With
// too few slots to cover that log scale at once (small `parallel`), an untried duration is
// never more than LADDER_FACTOR x the longest idle proven or in flight, so the time to a
// first death grows with the timeout, not with `maxMs`. A canary whose answer is already implied (its duration is below a survivor or above a
// death) is moot and is cancelled at once, freeing its slot for a useful one.
//
// Used by the `discover` command (discover/run.ts) and by the adaptive heartbeat learner.

export interface SearchOptions {
  /** The longest idle tried; nothing dying within it means no middlebox to worry about. */
  readonly maxMs: number;
  /** The shortest idle tried first. */
  readonly minMs: number;
  /** Canaries in flight at most. */
  readonly parallel: number;
  /** Stop when the bracket is this narrow: absolute floor and fraction of its lower bound. */
  readonly resolutionMs: number;
  readonly resolutionFraction: number;
}

export interface Bracket {
  /** Longest idle known to survive (0 when none did). */
  readonly minMs: number;
  /** Shortest idle known to die, or null when none did. */
  readonly maxMs: number | null;
}

export const DEFAULT_SEARCH: Omit<SearchOptions, 'maxMs'> = {
  minMs: 1_000,
  parallel: 16,
  resolutionMs: 1_000,
  resolutionFraction: 0.15,
};

/** With few slots, each new duration is at most this many times the longest one proven or in flight. */
const LADDER_FACTOR = 2;

export class IdleSearch {
  readonly #options: SearchOptions;
  /** Enough slots to put canaries at every LADDER_FACTOR step up to maxMs at once: then maxMs is tried first. */
  readonly #slotsForLadder: boolean;
  readonly #inFlight = new Set<number>();
  /** Every duration planned so far (outcomes are recorded at the silence observed, which may differ). */
  readonly #planned = new Set<number>();
  /** Every duration tested, with whether it survived. */
  readonly #survived: number[] = [];
  readonly #died: number[] = [];

  constructor(options: SearchOptions) {
    if (!(options.minMs > 0 && options.maxMs >= options.minMs && options.parallel >= 1)) {
      throw new RangeError('search needs 0 < minMs <= maxMs and parallel >= 1');
    }
    this.#options = options;
    this.#slotsForLadder = options.parallel > Math.log(options.maxMs / options.minMs) / Math.log(LADDER_FACTOR) + 1;
  }

  get bracket(): Bracket {
    const died = this.#died.length > 0 ? Math.min(...this.#died) : null;
    const below = this.#survived.filter((ms) => died === null || ms < died);
    return { minMs: below.length > 0 ? Math.max(...below) : 0, maxMs: died };
  }

  /** True once the bracket is narrow enough, or `maxMs` survived with no death. */
  get finished(): boolean {
    const { minMs, maxMs } = this.bracket;
    if (maxMs === null) return minMs >= this.#options.maxMs;
    return maxMs - minMs <= this.#resolution(minMs);
  }

  get inFlight(): readonly number[] {
    return [...this.#inFlight];
  }

  /**
   * The outcome of the canary planned for `durationMs`, recorded at the silence the flow
   * really had (`observedMs`): a death shorter when it came while idle, longer when the
   * probe went out late; a survival is proof only of the silence measured, which a coarse
   * clock may make a little shorter than planned.
   */
  record(durationMs: number, survived: boolean, observedMs = durationMs): void {
    this.#inFlight.delete(durationMs);
    if (survived) this.#survived.push(observedMs);
    else this.#died.push(observedMs);
  }

  /** A canary that could not tell (connect failed, cancelled): its slot is free again. */
  forget(durationMs: number): void {
    this.#inFlight.delete(durationMs);
    this.#planned.delete(durationMs);
  }

  /** In-flight durations whose outcome is already implied: cancel them (they are forgotten here). */
  moot(): number[] {
    const { minMs, maxMs } = this.bracket;
    const moot = [...this.#inFlight].filter((ms) => ms <= minMs || (maxMs !== null && ms >= maxMs) || this.finished);
    for (const ms of moot) {
      this.#inFlight.delete(ms);
      this.#planned.delete(ms);
    }
    return moot;
  }

  /** New durations to start now, filling the free slots (may be empty). */
  plan(): number[] {
    const planned: number[] = [];
    while (!this.finished && this.#inFlight.size < this.#options.parallel) {
      const next = this.#nextDuration();
      if (next === null) break;
      this.#inFlight.add(next);
      this.#planned.add(next);
      planned.push(next);
    }
    return planned;
  }

  #resolution(lowMs: number): number {
    return Math.max(this.#options.resolutionMs, lowMs * this.#options.resolutionFraction);
  }

  #nextDuration(): number | null {
    const { minMs: low, maxMs: high } = this.bracket;
    const options = this.#options;
    const open = high === null;
    // Ends of the unknown range first: the shortest idle tried, then (no death yet) --max itself.
    if (low === 0 && !this.#tested(options.minMs) && (open || options.minMs < high)) return options.minMs;
    const reach = Math.max(low, ...this.#inFlight);
    if (open && !this.#tested(options.maxMs) && (this.#slotsForLadder || reach * LADDER_FACTOR >= options.maxMs)) return options.maxMs;
    const top = open ? options.maxMs : high;
    const points = [low, ...[...this.#inFlight].filter((ms) => ms > low && ms < top), top].sort((a, b) => a - b);
    let best: { from: number; to: number; width: number } | null = null;
    for (let i = 1; i < points.length; i++) {
      const from = points[i - 1]!;
      const to = points[i]!;
      if (to - from <= this.#resolution(from)) continue; // already as narrow as asked
      // Log scale while unbounded (so 1 s .. 30 m is covered in ratio), linear once bounded.
      // Unbounded, gaps nearer the longest survivor weigh more: if the next canary up dies,
      // the timeout is in the gap just above it, and canaries already splitting that gap
      // answer a whole round earlier than ones started after the death.
      const width = open ? Math.log(to / Math.max(from, options.minMs / 2)) / i : to - from;
      if (!best || width > best.width) best = { from, to, width };
    }
    if (!best) return null;
    const floor = Math.max(best.from, options.minMs / 2);
    const middle = !open ? (best.from + best.to) / 2 : this.#slotsForLadder ? Math.sqrt(floor * best.to) : Math.min(Math.sqrt(floor * best.to), floor * LADDER_FACTOR);
    const rounded = Math.round(middle / 100) * 100; // whole tenths of a second read better
    return rounded > best.from && rounded < best.to && !this.#tested(rounded) ? rounded : null;
  }

  #tested(ms: number): boolean {
    return this.#planned.has(ms) || this.#survived.includes(ms) || this.#died.includes(ms);
  }
}
