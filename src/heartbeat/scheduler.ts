import type { Clock } from '../clock.js';
import type { HeartbeatConfig } from '../config/schema.js';
import type { Tracker } from '../protocols/types.js';

// When to probe one upstream connection, and when its probe is overdue: the one
// heartbeat schedule, used by live sessions (tcp/session.ts, HTTP tunnels) and by the
// warm pool's parked spares (pool/warm.ts) alike. A pure object per connection, no
// timer: the owner calls next() from the shared clock's tick and does what it says
// (write the probe, close as heartbeat_timeout, log that heartbeats are off).
//
// Rules (Envoy's interval, timeout, jitter):
//  - a probe is due after `every` (x a jitter factor fixed per connection, so connections
//    started together do not probe in lockstep) of silence on the upstream wire, either way;
//  - only when the codec is at a message boundary (quiet), not inside a transaction unless
//    asked, and not once the client has been silent past maxIdle (the server's own guards
//    are left to fire);
//  - `every` is read at each check, so a learned interval (every: auto) reaches live connections;
//  - a probe unanswered after `timeout` is the verdict: the upstream is dead;
//  - the round trip is measured on the precise clock.

/** ok: answered; error: answered with an error (alive, probe refused); timeout: unanswered (dead); unsupported: stream opaque; sent: one-way probe. */
export type HeartbeatResult = 'ok' | 'error' | 'timeout' | 'unsupported' | 'sent';

/** wait: nothing to do; probe: write probe(); timeout: the probe is overdue; off: the tracker went off (said once). */
export type HeartbeatDecision = 'wait' | 'probe' | 'timeout' | 'off';

export interface HeartbeatScheduleOptions {
  /** The interval in force, read at every check (every: auto changes it); default config.everyMs. */
  readonly interval?: { readonly everyMs: number };
  /**
   * When the client last spoke, for maxIdle; null while there is no client (a parked
   * spare), which maxIdle does not apply to.
   */
  readonly clientSince: number | null;
  /** Where the jitter comes from (tests fix it); Math.random by default. */
  readonly random?: () => number;
}

export class HeartbeatSchedule {
  readonly #config: HeartbeatConfig;
  readonly #clock: Clock;
  readonly #interval: { readonly everyMs: number };
  /** Fixed per connection, in [1 - jitter, 1 + jitter]. */
  readonly #jitterFactor: number;
  /** Last byte of any kind on the upstream wire, probes included. */
  #lastWireAt: number;
  #lastClientAt: number | null;
  #probeSentAt = 0;
  #probeSentPrecise = 0;
  #offSaid = false;

  constructor(config: HeartbeatConfig, clock: Clock, options: HeartbeatScheduleOptions) {
    this.#config = config;
    this.#clock = clock;
    this.#interval = options.interval ?? config;
    this.#jitterFactor = 1 + config.jitter * ((options.random ?? Math.random)() * 2 - 1);
    this.#lastWireAt = clock.now();
    this.#lastClientAt = options.clientSince;
  }

  /** The silence after which this connection is probed, ms (every x its jitter factor). */
  get dueAfterMs(): number {
    return this.#interval.everyMs * this.#jitterFactor;
  }

  /** When the upstream wire last carried a byte either way (probes included): the silence is measured from here. */
  get lastWireAt(): number {
    return this.#lastWireAt;
  }

  /** A byte from the upstream: the silence starts over. */
  heard(now: number): void {
    this.#lastWireAt = now;
  }

  /** A byte from the client toward the upstream: the silence starts over, and maxIdle too. */
  clientSent(now: number): void {
    this.#lastWireAt = this.#lastClientAt = now;
  }

  /** What the connection should do now. `mayProbe`: false where the owner forbids a probe (a half-closed pair). */
  next(now: number, tracker: Tracker, mayProbe = true): HeartbeatDecision {
    const config = this.#config;
    const clock = this.#clock;
    // A byte since the last tick carries that tick's time; when this tick comes late (a loaded
    // machine) the whole gap would read as silence and a busy connection be probed. Such a byte
    // counts as at most one period old.
    if (clock.ticking && this.#lastWireAt >= clock.previousTickAt) this.#lastWireAt = Math.max(this.#lastWireAt, now - clock.periodMs);
    if (tracker.probing) return now - this.#probeSentAt >= config.timeoutMs ? 'timeout' : 'wait';
    if (tracker.state === 'off') {
      if (this.#offSaid) return 'wait';
      this.#offSaid = true;
      return 'off';
    }
    if (!mayProbe || tracker.state !== 'quiet') return 'wait';
    // Leave the server's own guards to fire: idle-in-transaction, and idle timeouts set above maxIdle.
    if (tracker.inTransaction && !config.inTransaction) return 'wait';
    if (config.maxIdleMs > 0 && this.#lastClientAt !== null && now - this.#lastClientAt >= config.maxIdleMs) return 'wait';
    return now - this.#lastWireAt >= this.dueAfterMs ? 'probe' : 'wait';
  }

  /** The probe's bytes, for the owner to write; its reply deadline starts now. */
  probe(tracker: Tracker, now: number): Buffer {
    this.#probeSentAt = this.#lastWireAt = now;
    this.#probeSentPrecise = this.#clock.preciseNow();
    return tracker.probe();
  }

  /** The probe's reply has been consumed: its round trip, ms. */
  answered(): number {
    return this.#clock.preciseNow() - this.#probeSentPrecise;
  }

  /** How long the outstanding probe has waited, ms (the timeout verdict's detail). */
  waited(now: number): number {
    return now - this.#probeSentAt;
  }
}
