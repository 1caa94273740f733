import type { EvictionReason } from '../errors.js';
import type { Metrics } from './registry.js';

// One route's metric series, bound once, and batched: prom-client hashes the label
// set on every inc() or set() of a child, which the connection path would otherwise pay
// about ten times per connection or request (accepted, active, connect, pool gauges,
// eviction, requests by status...).
// Here an event adds to a plain number; flush() hands the sums to prom-client. The
// route calls it on the shared tick and before every scrape, so /metrics is exact.

type CounterChild = { inc(value?: number): void };
type GaugeChild = { inc(value?: number): void; set(value: number): void };
type HistogramChild = { observe(value: number): void };

interface Flushable {
  flush(): void;
}

/** A counter whose increments reach prom-client at the next flush. */
class BatchedCounter implements Flushable {
  readonly #child: CounterChild;
  #pending = 0;
  constructor(child: CounterChild) {
    this.#child = child;
  }
  inc(value = 1): void {
    this.#pending += value;
  }
  flush(): void {
    if (this.#pending === 0) return;
    this.#child.inc(this.#pending);
    this.#pending = 0;
  }
}

/** A gauge moved by inc/dec (a delta) or set (a value), applied at the next flush. */
class BatchedGauge implements Flushable {
  readonly #child: GaugeChild;
  #delta = 0;
  #value: number | null = null;
  constructor(child: GaugeChild) {
    this.#child = child;
  }
  inc(value = 1): void {
    this.#delta += value;
  }
  dec(value = 1): void {
    this.#delta -= value;
  }
  set(value: number): void {
    this.#value = value;
    this.#delta = 0;
  }
  flush(): void {
    if (this.#value !== null) this.#child.set(this.#value);
    if (this.#delta !== 0) this.#child.inc(this.#delta);
    this.#value = null;
    this.#delta = 0;
  }
}

export class RouteMetrics {
  readonly accepted: BatchedCounter;
  readonly active: BatchedGauge;
  readonly reuse: BatchedCounter;
  readonly bytesUpstream: BatchedCounter;
  readonly bytesDownstream: BatchedCounter;
  readonly poolIdle: BatchedGauge;
  readonly poolActive: BatchedGauge;
  /** FastHistogram series: already cheap, not batched. */
  readonly connectSeconds: HistogramChild;
  readonly heartbeatRtt: HistogramChild;
  readonly upstreamRequestSeconds: HistogramChild;
  /** Observed once per upstream connection, when it closes: not on a hot path. */
  readonly requestsPerUpstreamConnection: HistogramChild;
  readonly #metrics: Metrics;
  readonly #route: string;
  readonly #batched: Flushable[] = [];
  readonly #connects = new Map<string, BatchedCounter>();
  readonly #evictions = new Map<string, BatchedCounter>();
  readonly #heartbeats = new Map<string, BatchedCounter>();
  readonly #tlsHandshakes = new Map<string, BatchedCounter>();
  readonly #retries = new Map<string, BatchedCounter>();
  readonly #acceptErrors = new Map<string, BatchedCounter>();
  readonly #requests = new Map<number, BatchedCounter>();

  constructor(metrics: Metrics, route: string) {
    this.#metrics = metrics;
    this.#route = route;
    metrics.initRoute(route);
    this.accepted = this.#batch(new BatchedCounter(metrics.connectionsAccepted.labels(route)));
    this.active = this.#batch(new BatchedGauge(metrics.connectionsActive.labels(route)));
    this.reuse = this.#batch(new BatchedCounter(metrics.reuse.labels(route)));
    this.bytesUpstream = this.#batch(new BatchedCounter(metrics.bytes.labels(route, 'upstream')));
    this.bytesDownstream = this.#batch(new BatchedCounter(metrics.bytes.labels(route, 'downstream')));
    this.poolIdle = this.#batch(new BatchedGauge(metrics.poolIdle.labels(route)));
    this.poolActive = this.#batch(new BatchedGauge(metrics.poolActive.labels(route)));
    this.connectSeconds = metrics.upstreamConnectSeconds.labels(route);
    this.heartbeatRtt = metrics.heartbeatRtt.labels(route);
    this.upstreamRequestSeconds = metrics.upstreamRequestSeconds.labels(route);
    this.requestsPerUpstreamConnection = metrics.requestsPerUpstreamConnection.labels(route);
  }

  get registry(): Metrics {
    return this.#metrics;
  }

  connect(result: 'ok' | 'error' | 'timeout'): BatchedCounter {
    return this.#counter(this.#connects, result, () => this.#metrics.upstreamConnects.labels(this.#route, result));
  }

  eviction(reason: EvictionReason): BatchedCounter {
    return this.#counter(this.#evictions, reason, () => this.#metrics.evictions.labels(this.#route, reason));
  }

  heartbeat(result: string): BatchedCounter {
    return this.#counter(this.#heartbeats, result, () => this.#metrics.heartbeats.labels(this.#route, result));
  }

  tlsHandshake(resumed: boolean, side: 'upstream' | 'client' = 'upstream'): BatchedCounter {
    const key = `${side}|${resumed}`;
    return this.#counter(this.#tlsHandshakes, key, () => this.#metrics.tlsHandshakes.labels(this.#route, side, String(resumed)));
  }

  retry(reason: string): BatchedCounter {
    return this.#counter(this.#retries, reason, () => this.#metrics.httpRetries.labels(this.#route, reason));
  }

  acceptError(code: string): BatchedCounter {
    return this.#counter(this.#acceptErrors, code, () => this.#metrics.acceptErrors.labels(this.#route, code));
  }

  /** HTTP requests answered, by the status sent to the client. */
  request(status: number): BatchedCounter {
    let counter = this.#requests.get(status);
    if (!counter) this.#requests.set(status, (counter = this.#batch(new BatchedCounter(this.#metrics.httpRequests.labels(this.#route, String(status))))));
    return counter;
  }

  /** Hands every pending count to prom-client. */
  flush(): void {
    for (const metric of this.#batched) metric.flush();
  }

  #batch<T extends Flushable>(metric: T): T {
    this.#batched.push(metric);
    return metric;
  }

  #counter(map: Map<string, BatchedCounter>, key: string, make: () => CounterChild): BatchedCounter {
    let counter = map.get(key);
    if (!counter) map.set(key, (counter = this.#batch(new BatchedCounter(make()))));
    return counter;
  }
}
