import type net from 'node:net';
import type { Clock } from './clock.js';
import { BurstLog } from './log-burst.js';
import type { Logger } from './log.js';
import type { Metrics } from './metrics/registry.js';
import { canPauseAccepts, pauseAccepts, resumeAccepts } from './net/accept-pause.js';
import { countOpenFds, readFdLimit } from './net/fd-limit.js';

// HAProxy's global maxconn, derived from the fd limit: the route listeners stop accepting
// when the process nears RLIMIT_NOFILE, instead of accepting clients that libuv then closes
// unseen at EMFILE. Queued clients wait in the kernel's backlog and are served once
// descriptors free up; the reserve keeps the admin listener (/metrics, /healthz), logs,
// reloads and DNS working meanwhile.
//
// Counting: an accepted socket gets the lowest free fd, so an accepted fd N proves N+1
// open descriptors: checked on every accept at no cost. The exact count (a readdir of
// /proc/self/fd, 16 ms at 10,000 fds) runs on the shared clock: every 10 s far from the
// budget, every second near it or while paused; it catches fds opened in low holes.

const FAR_CHECK_MS = 10_000;
const NEAR_CHECK_MS = 1_000;

/** Descriptors kept out of the data path: 32 + 5 % (HAProxy-like), but at most an eighth of a small limit. */
export function fdReserve(limit: number): number {
  return Math.min(32 + Math.ceil(limit * 0.05), Math.floor(limit / 8));
}

export class FdBudget {
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #metrics: Metrics;
  /** Descriptors the process may hold before its route listeners pause; null when the limit is unknown. */
  readonly budget: number | null;
  readonly #resumeBelow: number;
  readonly #listeners = new Set<net.Server>();
  /** Paused listeners and the fd each was paused as. */
  readonly #paused = new Map<net.Server, number>();
  readonly #saturation: BurstLog;
  #open: number | null = null;
  /** At the budget since the last count below the resume mark (paused, or unpausable and counted). */
  #saturated = false;
  #lastCountAt = Number.NEGATIVE_INFINITY;
  #unsubscribe: (() => void) | null = null;

  constructor(deps: { log: Logger; clock: Clock; metrics: Metrics }, limit = readFdLimit()) {
    this.#log = deps.log;
    this.#clock = deps.clock;
    this.#metrics = deps.metrics;
    this.budget = limit === null ? null : limit - fdReserve(limit);
    this.#resumeBelow = this.budget === null ? 0 : this.budget - Math.max(2, Math.ceil(this.budget * 0.02));
    this.#saturation = new BurstLog(deps.log, deps.clock, { level: 'warn', msg: 'file descriptor budget reached; accepts paused, new clients wait in the backlog' });
    if (limit !== null && this.budget !== null) {
      deps.metrics.fdLimit.set(limit);
      deps.metrics.fdBudget.set(this.budget);
      deps.metrics.acceptPaused.set(0);
      this.#unsubscribe = deps.clock.subscribe((now) => this.#tick(now));
      if (!canPauseAccepts()) deps.log.warn({ budget: this.budget }, 'accepts cannot be paused on this platform: the fd budget is only counted and logged');
    }
  }

  /** A route listener: paused with the others at the budget. Returns the unwatch. */
  watch(server: net.Server): () => void {
    this.#listeners.add(server);
    return () => {
      this.#listeners.delete(server);
      this.#paused.delete(server);
    };
  }

  /** Every accepted client socket's fd (null when unknown): pauses at once when it proves the budget reached. */
  accepted(fd: number | null): void {
    if (this.budget === null || fd === null) return;
    // fd N proves N+1 open; its upstream will take one more.
    if (fd + 2 >= this.budget) this.#saturate(fd + 1);
  }

  /** Process-wide state for /healthz-like readers and tests. */
  get paused(): boolean {
    return this.#paused.size > 0;
  }

  close(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    this.#resume();
    this.#saturation.flush();
  }

  #tick(now: number): void {
    if (this.budget === null) return;
    const near = this.paused || this.#open === null || this.#open * 2 >= this.budget;
    if (now - this.#lastCountAt < (near ? NEAR_CHECK_MS : FAR_CHECK_MS)) return;
    this.#lastCountAt = now;
    this.#open = countOpenFds();
    if (this.#open === null) return;
    this.#metrics.fdsOpen.set(this.#open);
    if (this.#open + 1 >= this.budget) this.#saturate(this.#open);
    else if (this.#saturated && this.#open < this.#resumeBelow) this.#resume();
  }

  #saturate(open: number): void {
    let paused = 0;
    for (const server of this.#listeners) {
      if (this.#paused.has(server)) continue;
      const fd = pauseAccepts(server);
      if (fd !== null) {
        this.#paused.set(server, fd);
        paused++;
      }
    }
    if (this.#saturated) return;
    this.#saturated = true;
    this.#metrics.fdBudgetReached.inc();
    this.#metrics.acceptPaused.set(this.paused ? 1 : 0);
    this.#saturation.note({ open, budget: this.budget, listenersPaused: paused });
  }

  #resume(): void {
    if (!this.#saturated) return;
    this.#saturated = false;
    for (const [server, fd] of this.#paused) resumeAccepts(server, fd);
    this.#paused.clear();
    this.#metrics.acceptPaused.set(0);
    this.#log.info({ open: this.#open, budget: this.budget }, 'file descriptors free again; accepts resumed');
  }
}
