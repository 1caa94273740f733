import client from 'prom-client';
import { buildInfo } from '../build-info.js';
import { FastHistogram } from './fast-histogram.js';

// Every metric of INTERFACE.md, with its help text, in one table. One registry per
// process (owned by app.ts); reloads keep it, so counters never reset on SIGHUP.

export const PREFIX = 'keepalive_proxy_';

/** prom-client default metrics left out of /metrics, and why: see the constructor. */
const DEFAULT_METRICS_DROPPED = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

export class Metrics {
  readonly registry = new client.Registry();
  /** Hot-path counts are kept in plain numbers by their owners and pushed here on scrape. */
  readonly #beforeScrape = new Set<() => void>();

  // The first metric registered: a scrape reads metrics in registration order, so its
  // collect runs the flushes before any metric is read.
  readonly connectionsAccepted = new client.Counter({
    name: `${PREFIX}connections_accepted_total`,
    help: 'Client connections accepted, per route.',
    labelNames: ['route'] as const,
    registers: [this.registry],
    collect: () => {
      for (const flush of this.#beforeScrape) flush();
    },
  });
  readonly connectionsActive = new client.Gauge({
    name: `${PREFIX}connections_active`,
    help: 'Client connections open now, per route.',
    labelNames: ['route'] as const,
    registers: [this.registry],
  });
  readonly upstreamConnects = new client.Counter({
    name: `${PREFIX}upstream_connects_total`,
    help: 'Upstream connection attempts by result (ok, error, timeout).',
    labelNames: ['route', 'result'] as const,
    registers: [this.registry],
  });
  readonly upstreamConnectSeconds = new FastHistogram({
    name: `${PREFIX}upstream_connect_seconds`,
    help: 'Time to establish an upstream connection, TLS handshake included.',
    labelNames: ['route'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly evictions = new client.Counter({
    name: `${PREFIX}evictions_total`,
    help: 'Connections closed by the proxy or found closed, by reason.',
    labelNames: ['route', 'reason'] as const,
    registers: [this.registry],
  });
  readonly reuse = new client.Counter({
    name: `${PREFIX}reuse_total`,
    help: 'Times an upstream connection that already existed served a new client or request.',
    labelNames: ['route'] as const,
    registers: [this.registry],
  });
  readonly heartbeats = new client.Counter({
    name: `${PREFIX}heartbeats_total`,
    help: 'Application heartbeats by result (ok, error, timeout, unsupported, sent).',
    labelNames: ['route', 'result'] as const,
    registers: [this.registry],
  });
  readonly heartbeatRtt = new FastHistogram({
    name: `${PREFIX}heartbeat_rtt_seconds`,
    help: 'Round-trip time of answered application heartbeats.',
    labelNames: ['route'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly bytes = new client.Counter({
    name: `${PREFIX}bytes_total`,
    help: 'Payload bytes forwarded by direction (upstream, downstream): upstream = client to upstream, downstream = upstream to client.',
    labelNames: ['route', 'direction'] as const,
    registers: [this.registry],
  });
  readonly poolIdle = new client.Gauge({
    name: `${PREFIX}pool_idle`,
    help: 'Upstream connections parked idle in the pool.',
    labelNames: ['route'] as const,
    registers: [this.registry],
  });
  readonly pathIdleTimeout = new client.Gauge({
    name: `${PREFIX}path_idle_timeout_seconds`,
    help: 'heartbeat every: auto: the longest idle the route\'s canaries proved the path survives (the learned lower bound of its idle timeout).',
    labelNames: ['route'] as const,
    registers: [this.registry],
  });
  readonly heartbeatInterval = new client.Gauge({
    name: `${PREFIX}heartbeat_interval_seconds`,
    help: 'heartbeat every: auto: the heartbeat interval now in force on the route.',
    labelNames: ['route'] as const,
    registers: [this.registry],
  });
  readonly upstreamRtt = new FastHistogram({
    name: `${PREFIX}upstream_rtt_seconds`,
    help: 'tcp-family routes: the kernel\'s smoothed round-trip time of upstream connections (TCP_INFO tcpi_rtt), sampled every few seconds per connection.',
    labelNames: ['route'] as const,
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly keepaliveProbes = new client.Counter({
    name: `${PREFIX}keepalive_probes_total`,
    help: 'tcp-family routes: unanswered TCP keepalive probes seen on upstream connections (rises of TCP_INFO tcpi_probes between samples).',
    labelNames: ['route'] as const,
    registers: [this.registry],
  });
  readonly upstreamHalfOpen = new client.Counter({
    name: `${PREFIX}upstream_half_open_total`,
    help: 'tcp-family routes: upstream connections seen half-open (unacknowledged data and retransmission timeouts in a row growing over TCP_INFO samples), before the kernel gives up on them.',
    labelNames: ['route'] as const,
    registers: [this.registry],
  });
  readonly poolActive = new client.Gauge({
    name: `${PREFIX}pool_active`,
    help: 'Upstream connections from the pool serving a client or request now.',
    labelNames: ['route'] as const,
    registers: [this.registry],
  });
  readonly acceptErrors = new client.Counter({
    name: `${PREFIX}accept_errors_total`,
    help: 'Client connections a route could not take, by error code: failed accepts, and (tcp routes) clients accepted when no descriptor was left for their upstream (EMFILE, ENFILE).',
    labelNames: ['route', 'code'] as const,
    registers: [this.registry],
  });
  readonly fdLimit = new client.Gauge({
    name: `${PREFIX}fd_limit`,
    help: 'The process\'s file descriptor limit (soft RLIMIT_NOFILE).',
    aggregator: 'sum',
    registers: [this.registry],
  });
  readonly fdBudget = new client.Gauge({
    name: `${PREFIX}fd_budget`,
    help: 'Open file descriptors at which the route listeners stop accepting: fd_limit less a reserve for admin, logs, reloads and DNS.',
    aggregator: 'sum',
    registers: [this.registry],
  });
  readonly fdsOpen = new client.Gauge({
    name: `${PREFIX}fds_open`,
    help: 'Open file descriptors at the last count (every 10 s, every second near the budget).',
    aggregator: 'sum',
    registers: [this.registry],
  });
  readonly acceptPaused = new client.Gauge({
    name: `${PREFIX}accept_paused`,
    help: '1 while the route listeners do not accept because open descriptors reached fd_budget (new clients wait in the kernel backlog).',
    aggregator: 'max',
    registers: [this.registry],
  });
  readonly fdBudgetReached = new client.Counter({
    name: `${PREFIX}fd_budget_reached_total`,
    help: 'Times open descriptors reached fd_budget and the route listeners paused their accepts.',
    registers: [this.registry],
  });
  readonly sockoptErrors = new client.Counter({
    name: `${PREFIX}sockopt_errors_total`,
    help: 'Socket options the kernel refused on a connection, or could not be set because the socket had no fd left, by option (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT, no_fd).',
    labelNames: ['route', 'option'] as const,
    registers: [this.registry],
  });
  readonly configReloads = new client.Counter({
    name: `${PREFIX}config_reloads_total`,
    help: 'SIGHUP reloads by result (ok, error).',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly buildInfo = new client.Gauge({
    name: `${PREFIX}build_info`,
    help: 'Always 1; its labels version, node and commit say what is running.',
    labelNames: ['version', 'node', 'commit'] as const,
    // With workers every process reports the same build: one of them, not their sum.
    aggregator: 'first',
    registers: [this.registry],
  });
  readonly workerRestarts = new client.Counter({
    name: `${PREFIX}worker_restarts_total`,
    help: 'Worker processes that exited unexpectedly and were replaced (always 0 with workers: 1).',
    registers: [this.registry],
  });

  constructor(collectDefaults = true) {
    const { version, node, commit } = buildInfo();
    this.buildInfo.labels(version, node, commit).set(1);
    if (collectDefaults) {
      client.collectDefaultMetrics({ register: this.registry, prefix: PREFIX });
      // Gauges named like counters fail `promtool check metrics`; each is the sum of the
      // per-type gauge of the same name without _total (sum() gives it back).
      for (const name of DEFAULT_METRICS_DROPPED) this.registry.removeSingleMetric(`${PREFIX}${name}`);
    }
  }

  /** Registers a flush of counts gathered outside prom-client; returns its removal. */
  onScrape(flush: () => void): () => void {
    this.#beforeScrape.add(flush);
    return () => this.#beforeScrape.delete(flush);
  }

  /** Start every per-route series at 0 so dashboards and rate() see them before the first event. */
  initRoute(route: string): void {
    this.connectionsAccepted.labels(route).inc(0);
    this.connectionsActive.labels(route).set(0);
    for (const result of ['ok', 'error', 'timeout']) this.upstreamConnects.labels(route, result).inc(0);
    this.reuse.labels(route).inc(0);
    for (const direction of ['upstream', 'downstream']) this.bytes.labels(route, direction).inc(0);
    this.poolIdle.labels(route).set(0);
    this.poolActive.labels(route).set(0);
  }

  // ---- HTTP routes (issue 4) ----
  readonly httpRequests = new client.Counter({
    name: `${PREFIX}requests_total`,
    help: 'HTTP requests answered, by the status code sent to the client (proxy errors included).',
    labelNames: ['route', 'code'] as const,
    registers: [this.registry],
  });
  // Observed per request, connection or heartbeat: FastHistogram (same exposition as
  // prom-client's, no label hashing per observation).
  readonly upstreamRequestSeconds = new FastHistogram({
    name: `${PREFIX}upstream_request_duration_seconds`,
    help: 'Time from handing an HTTP request to the upstream pool to the last byte of its response.',
    labelNames: ['route'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly requestsPerUpstreamConnection = new client.Histogram({
    name: `${PREFIX}requests_per_upstream_connection`,
    help: 'HTTP requests served by each pooled upstream connection, observed when it closes.',
    labelNames: ['route'] as const,
    buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
    registers: [this.registry],
  });
  readonly httpRetries = new client.Counter({
    name: `${PREFIX}retries_total`,
    help: 'HTTP requests retried once on a fresh connection after a reused one failed before any response byte, by the failure.',
    labelNames: ['route', 'reason'] as const,
    registers: [this.registry],
  });
  readonly poolLearnedIdleTimeout = new client.Gauge({
    name: `${PREFIX}pool_learned_idle_timeout_seconds`,
    help: 'HTTP routes: the shortest idle age at which the upstream was seen closing a pooled keep-alive connection; the pool parks connections for less. Absent until learned.',
    labelNames: ['route'] as const,
    registers: [this.registry],
  });
  readonly tlsHandshakes = new client.Counter({
    name: `${PREFIX}tls_handshakes_total`,
    help: 'TLS handshakes completed, by side and whether the session was resumed (upstream, client, true, false).',
    labelNames: ['route', 'side', 'resumed'] as const,
    registers: [this.registry],
  });
}
