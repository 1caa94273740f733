import type { SpliceEnd, TcpRef } from '../net/splice-end.js';
import { formatHostPort } from '../config/hostport.js';
import type { BurstLog, BurstLogOptions } from '../log-burst.js';
import type { Metrics } from '../metrics/registry.js';
import { readTcpInfo, type TcpInfo } from '../net/tcp-info.js';

// Kernel truth about a route's upstream connections, sampled on the shared clock: every
// SAMPLE_EVERY_MS per connection, at most MAX_SAMPLES_PER_TICK getsockopt calls per tick
// whatever the number of connections. From each sample:
//   - upstream_rtt_seconds observes the kernel's smoothed RTT;
//   - keepalive_probes_total counts rises of unanswered keepalive probes;
//   - unacknowledged data with the count of retransmission timeouts in a row (tcpi_retransmits:
//     back to 0 as soon as an ACK makes progress, so a lossy but live path rarely shows it)
//     growing in HALF_OPEN_SAMPLES samples in a row is a half-open upstream (a blackholed
//     path, a peer gone without a RST): one
//     folded log line and upstream_half_open_total, long before the kernel gives up
//     (tcp_retries2: about 15 minutes without a user timeout). A suspect is sampled
//     every SUSPECT_EVERY_MS so the verdict comes in seconds.

const SAMPLE_EVERY_MS = 5_000;
const SUSPECT_EVERY_MS = 1_000;
const MAX_SAMPLES_PER_TICK = 64;
/** Samples with unacked data and more timeouts in a row than the sample before, with no progress between them. */
const HALF_OPEN_SAMPLES = 2;

/** The folded log line of a half-open upstream (the route owns the BurstLog and flushes it). */
export const HALF_OPEN_LOG: BurstLogOptions = {
  level: 'warn',
  msg: 'upstream half-open: sent data unacknowledged and retransmissions growing; the kernel has not given up yet',
};

/** What the watch needs of a session: its id and its upstream socket (TLS or TCP). */
export interface WatchedConnection {
  readonly id: string;
  readonly up: SpliceEnd;
}

interface Previous {
  dueAt: number;
  retransmits: number;
  probes: number;
  /** Samples in a row with unacked data and growing retransmission timeouts. */
  growing: number;
  reported: boolean;
}

export class KernelWatch {
  readonly #route: string;
  readonly #rtt: { observe(value: number): void };
  readonly #probes: { inc(value?: number): void };
  readonly #halfOpen: { inc(value?: number): void };
  readonly #halfOpenLog: BurstLog;
  /** Per upstream socket; gone with the socket. */
  readonly #previous = new WeakMap<TcpRef, Previous>();

  constructor(route: string, deps: { readonly metrics: Metrics }, halfOpenLog: BurstLog) {
    this.#route = route;
    this.#rtt = deps.metrics.upstreamRtt.labels(route);
    this.#probes = deps.metrics.keepaliveProbes.labels(route);
    this.#halfOpen = deps.metrics.upstreamHalfOpen.labels(route);
    this.#probes.inc(0);
    this.#halfOpen.inc(0);
    this.#halfOpenLog = halfOpenLog;
  }

  tick(now: number, connections: Iterable<WatchedConnection>): void {
    let budget = MAX_SAMPLES_PER_TICK;
    for (const connection of connections) {
      const tcp = connection.up.tcp;
      const previous = this.#previous.get(tcp);
      if (previous && previous.dueAt > now) continue;
      const info = readTcpInfo(tcp);
      if (info) this.#sampled(connection, tcp, info, previous, now);
      if (--budget === 0) return;
    }
  }

  #sampled(connection: WatchedConnection, tcp: TcpRef, info: TcpInfo, previous: Previous | undefined, now: number): void {
    // tcpi_rtt is 0 until the first RTT measurement.
    if (info.rttUs > 0) this.#rtt.observe(info.rttUs / 1e6);
    const state = previous ?? { dueAt: 0, retransmits: 0, probes: 0, growing: 0, reported: false };
    if (info.probes > state.probes) this.#probes.inc(info.probes - state.probes);
    if (info.unacked > 0 && info.retransmits > 0) {
      // Backoff doubles the timeout: a sample may fall between two; no progress keeps the streak.
      if (info.retransmits > state.retransmits) state.growing++;
    } else {
      state.growing = 0;
      state.reported = false;
    }
    if (state.growing >= HALF_OPEN_SAMPLES && !state.reported) {
      state.reported = true;
      this.#halfOpen.inc();
      this.#halfOpenLog.note({
        route: this.#route,
        id: connection.id,
        upstream: formatHostPort(tcp.remoteAddress, tcp.remotePort),
        unacked: info.unacked,
        retransmits: info.retransmits,
        totalRetrans: info.totalRetrans,
        lastDataRecvMs: info.lastDataRecvMs,
        rttUs: info.rttUs,
      });
    }
    state.retransmits = info.retransmits;
    state.probes = info.probes;
    state.dueAt = now + (state.growing > 0 && !state.reported ? SUSPECT_EVERY_MS : SAMPLE_EVERY_MS);
    if (!previous) this.#previous.set(tcp, state);
  }
}
