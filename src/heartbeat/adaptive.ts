import type { CanaryOutcome } from '../discover/canary.js';
import { heartbeatBelowProven } from '../discover/recommend.js';
import { IdleSearch } from '../discover/search.js';

// `heartbeat: { every: auto }`: one learner per route. It runs the discover search
// continuously with a few canary connections of its own (never a client's) and sets the
// route's heartbeat interval, which live sessions read at every tick:
//   - start at `min`;
//   - each canary that survives an idle period proves it: the interval rises to the safe
//     fraction of the longest proven idle (heartbeatBelowProven, LEARNED_FRACTION: the rule
//     `discover` recommends by), never above `max`;
//   - a canary that dies bounds the timeout: the interval is the safe fraction of the
//     longest idle still known to survive below that death;
//   - when the search has narrowed the bracket, it runs again after `reprobeMs` (paths change);
//   - a client connection lost to the path (keepalive or heartbeat timeout) drops the
//     interval to `min` at once and starts learning anew.
// No sockets and no clock of its own: canaries come from `startCanary`, time from tick(now).

/** After a canary could not tell (upstream down, refused), the next waits this long, doubling up to RETRY_MAX_MS. */
const RETRY_FIRST_MS = 1_000;
const RETRY_MAX_MS = 60_000;

export interface CanaryHandle {
  readonly done: Promise<CanaryOutcome>;
  tick(now: number): void;
  cancel(): void;
}

export interface AdaptiveOptions {
  readonly minMs: number;
  readonly maxMs: number;
  /** Canaries at once. */
  readonly canaries: number;
  /** Pause between a finished search and the next one. */
  readonly reprobeMs: number;
}

/** What a learner knows, as stored in stateDir. */
export interface Learned {
  /** Longest idle known to survive (0: none yet). */
  readonly survivedMs: number;
  readonly intervalMs: number;
}

export interface AdaptiveEvents {
  /** The interval in force changed (or the learned lower bound did). */
  onChange(learned: Learned, why: string): void;
}

export class AdaptiveHeartbeat {
  /** The route's interval in force: sessions read `everyMs` at every tick. */
  readonly interval: { everyMs: number };
  readonly #options: AdaptiveOptions;
  readonly #startCanary: (idleMs: number) => CanaryHandle;
  readonly #events: AdaptiveEvents;
  readonly #canaries = new Map<number, CanaryHandle>();
  /** Longest idle proven before the current search (kept unless the search finds a death below it). */
  #provenMs: number;
  #search: IdleSearch;
  #nextSearchAt = 0;
  #closed = false;
  /** Canaries in a row that could not tell, and when the next may start: an unreachable upstream is not dialled every tick. */
  #failures = 0;
  #retryAt = 0;
  #now = 0;
  /** The learned value last reported through onChange. */
  #reportedMs = -1;

  constructor(options: AdaptiveOptions, startCanary: (idleMs: number) => CanaryHandle, events: AdaptiveEvents, stored: Learned | null = null) {
    this.#options = options;
    this.#startCanary = startCanary;
    this.#events = events;
    this.#provenMs = stored ? Math.min(stored.survivedMs, 2 * options.maxMs) : 0;
    this.interval = { everyMs: this.#intervalFor(this.#provenMs) };
    this.#search = this.#newSearch();
  }

  /** Longest idle known to survive, or 0. */
  get learnedMs(): number {
    return this.#effectiveProvenMs();
  }

  tick(now: number): void {
    if (this.#closed) return;
    this.#now = now;
    for (const canary of this.#canaries.values()) canary.tick(now);
    if (now < this.#retryAt) return;
    if (this.#search.finished && this.#canaries.size === 0) {
      if (this.#nextSearchAt === 0) this.#nextSearchAt = now + this.#options.reprobeMs;
      if (now < this.#nextSearchAt) return;
      this.#provenMs = this.#effectiveProvenMs();
      this.#search = this.#newSearch();
      this.#nextSearchAt = 0;
    }
    this.#launch();
  }

  /** A client connection died of the path while idle: back to `min` now, and learn again. */
  onClientLost(): void {
    if (this.#closed) return;
    this.#cancelAll();
    this.#provenMs = 0;
    this.#search = this.#newSearch();
    this.#nextSearchAt = 0;
    this.#apply('a client connection was lost to the path: back to heartbeat.min');
  }

  close(): void {
    this.#closed = true;
    this.#cancelAll();
  }

  #launch(): void {
    for (const ms of this.#search.moot()) this.#cancel(ms);
    for (const ms of this.#search.plan()) {
      const canary = this.#startCanary(ms);
      this.#canaries.set(ms, canary);
      const search = this.#search;
      void canary.done.then((outcome) => this.#onOutcome(search, ms, canary, outcome));
    }
  }

  #onOutcome(search: IdleSearch, ms: number, canary: CanaryHandle, outcome: CanaryOutcome): void {
    if (this.#closed || search !== this.#search || this.#canaries.get(ms) !== canary) return;
    this.#canaries.delete(ms);
    if (outcome.kind === 'failed') {
      search.forget(ms);
      this.#retryAt = this.#now + Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** this.#failures++);
      // An upstream that cannot be reached is not a path verdict; try again at the next search.
      if (!search.finished) this.#nextSearchAt = 0;
      return;
    }
    this.#failures = 0;
    search.record(ms, outcome.kind === 'survived', outcome.idleMs);
    const why = outcome.kind === 'survived' ? `a canary survived ${Math.round(ms / 1000)}s idle` : `a canary died after ${Math.round(outcome.idleMs / 1000)}s idle (${outcome.how})`;
    this.#apply(why);
    for (const moot of search.moot()) this.#cancel(moot);
  }

  /** The longest proven idle: the search's, or the earlier one unless the search saw a death at or below it. */
  #effectiveProvenMs(): number {
    const { minMs, maxMs } = this.#search.bracket;
    if (maxMs !== null && maxMs <= this.#provenMs) return minMs;
    return Math.max(minMs, this.#provenMs);
  }

  #apply(why: string): void {
    const learned = this.#effectiveProvenMs();
    const next = this.#intervalFor(learned);
    if (next === this.interval.everyMs && learned === this.#reportedMs) return;
    this.#reportedMs = learned;
    this.interval.everyMs = next;
    this.#events.onChange({ survivedMs: learned, intervalMs: next }, why);
  }

  #intervalFor(provenMs: number): number {
    const { minMs, maxMs } = this.#options;
    return provenMs <= 0 ? minMs : Math.min(maxMs, Math.max(minMs, heartbeatBelowProven(provenMs)));
  }

  #newSearch(): IdleSearch {
    const { minMs, maxMs, canaries } = this.#options;
    // Proving `max` safe takes an idle of max / LEARNED_FRACTION (under 2 x max); start from just above what is proven.
    const from = Math.max(minMs, Math.min(this.#provenMs, 2 * maxMs));
    return new IdleSearch({ minMs: from, maxMs: 2 * maxMs, parallel: canaries, resolutionMs: 1_000, resolutionFraction: 0.15 });
  }

  #cancel(ms: number): void {
    this.#canaries.get(ms)?.cancel();
    this.#canaries.delete(ms);
  }

  #cancelAll(): void {
    for (const ms of [...this.#canaries.keys()]) this.#cancel(ms);
  }
}
