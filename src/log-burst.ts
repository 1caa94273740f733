import type { Clock } from './clock.js';
import type { Logger } from './log.js';

// Logs the first of a burst of like events at once, then at most one line per interval
// that says how many more there were (and, with `countBy`, how many of each kind): an
// upstream outage with thousands of clients retrying, a mass eviction or an fd limit
// must not turn into thousands of log lines per second, nor into silence.
//
// The summary of a burst that stops is written on the shared clock's tick (subscribed
// only while something is counted), so the last count is never left unsaid.

export type BurstLevel = 'info' | 'warn' | 'error';

export interface BurstLogOptions {
  readonly level: BurstLevel;
  readonly msg: string;
  /** Summary field that counts the folded events by the kind given to note() ("reasons"). */
  readonly countBy?: string;
  readonly intervalMs?: number;
}

export class BurstLog {
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #options: BurstLogOptions;
  readonly #intervalMs: number;
  #windowStart = Number.NEGATIVE_INFINITY;
  #folded = 0;
  #byKind = new Map<string, number>();
  #lastFields: Record<string, unknown> = {};
  #unsubscribe: (() => void) | null = null;

  constructor(log: Logger, clock: Clock, options: BurstLogOptions) {
    this.#log = log;
    this.#clock = clock;
    this.#options = options;
    this.#intervalMs = options.intervalMs ?? 1_000;
  }

  /** One event: written now when the last line is an interval old, else folded into the next summary. */
  note(fields: Record<string, unknown>, kind?: string): void {
    const now = this.#clock.now();
    if (now - this.#windowStart >= this.#intervalMs && this.#folded === 0) {
      this.#windowStart = now;
      this.#write(fields);
      this.#unsubscribe ??= this.#clock.subscribe((tickNow) => this.#tick(tickNow));
      return;
    }
    this.#folded++;
    this.#lastFields = fields;
    if (kind !== undefined) this.#byKind.set(kind, (this.#byKind.get(kind) ?? 0) + 1);
  }

  /** Writes what is folded and not yet said (the owner is closing), and lets go of the clock. */
  flush(): void {
    if (this.#folded > 0) this.#summarize(this.#clock.now());
    this.#unsubscribe?.();
    this.#unsubscribe = null;
  }

  #tick(now: number): void {
    if (now - this.#windowStart < this.#intervalMs) return;
    if (this.#folded > 0) {
      this.#summarize(now);
      return;
    }
    // A whole interval without an event: the burst is over, and so is the subscription.
    this.#unsubscribe?.();
    this.#unsubscribe = null;
  }

  #summarize(now: number): void {
    const summary: Record<string, unknown> = { ...this.#lastFields, alsoInLastInterval: this.#folded };
    if (this.#options.countBy !== undefined) summary[this.#options.countBy] = Object.fromEntries(this.#byKind);
    this.#windowStart = now;
    this.#folded = 0;
    this.#byKind = new Map();
    this.#write(summary);
  }

  #write(fields: Record<string, unknown>): void {
    this.#log[this.#options.level](fields, this.#options.msg);
  }
}
