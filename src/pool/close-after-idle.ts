// What one HTTP upstream origin does with idle keep-alive connections, learned from what
// it did: the shortest idle age at which it closed one of our pooled connections, whether
// it closed a parked connection (FIN or RST while parked), or closed a reused one before
// answering (a request that had to be retried). Many backends close sooner than their
// `Keep-Alive: timeout=N` says (or say nothing): the pool keeps its idle limit below
// this age, so a connection is retired before the upstream closes it under a request.
//
// A learned age lapses after LAPSE_MS without a new observation: an early close that was
// a one-off (a restart) must not shorten the pool's reuse for ever. Relearning costs at most
// one retried request.

const LAPSE_MS = 10 * 60_000;

export class CloseAfterIdle {
  #shortestMs = Infinity;
  #seenAt = 0;

  /** The shortest close-after-idle age in force, ms; Infinity when none (or it lapsed). */
  shortestMs(now: number): number {
    if (this.#shortestMs !== Infinity && now - this.#seenAt >= LAPSE_MS) this.#shortestMs = Infinity;
    return this.#shortestMs;
  }

  /** The upstream closed a connection that had been idle `ageMs`. Returns true when the shortest age went down. */
  observe(ageMs: number, now: number): boolean {
    if (!(ageMs > 0)) return false;
    const lower = ageMs < this.shortestMs(now);
    if (lower) this.#shortestMs = ageMs;
    if (ageMs <= this.#shortestMs) this.#seenAt = now;
    return lower;
  }
}
