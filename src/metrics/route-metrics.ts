import type { Metrics, EvictionReason } from './registry.js';

// One route's metric series, bound once: prom-client's labels() hashes its arguments on
// every call, which the connection path would otherwise pay several times per connection.

type CounterChild = { inc(value?: number): void };
type GaugeChild = { inc(value?: number): void; dec(value?: number): void; set(value: number): void };
type HistogramChild = { observe(value: number): void };

export class RouteMetrics {
  readonly accepted: CounterChild;
  readonly active: GaugeChild;
  readonly connectSeconds: HistogramChild;
  readonly reuse: CounterChild;
  readonly bytesUpstream: CounterChild;
  readonly bytesDownstream: CounterChild;
  readonly poolIdle: GaugeChild;
  readonly poolActive: GaugeChild;
  readonly heartbeatRtt: HistogramChild;
  readonly #metrics: Metrics;
  readonly #route: string;
  readonly #connects = new Map<string, CounterChild>();
  readonly #evictions = new Map<string, CounterChild>();
  readonly #heartbeats = new Map<string, CounterChild>();

  constructor(metrics: Metrics, route: string) {
    this.#metrics = metrics;
    this.#route = route;
    metrics.initRoute(route);
    this.accepted = metrics.connectionsAccepted.labels(route);
    this.active = metrics.connectionsActive.labels(route);
    this.connectSeconds = metrics.upstreamConnectSeconds.labels(route);
    this.reuse = metrics.reuse.labels(route);
    this.bytesUpstream = metrics.bytes.labels(route, 'upstream');
    this.bytesDownstream = metrics.bytes.labels(route, 'downstream');
    this.poolIdle = metrics.poolIdle.labels(route);
    this.poolActive = metrics.poolActive.labels(route);
    this.heartbeatRtt = metrics.heartbeatRtt.labels(route);
  }

  get registry(): Metrics {
    return this.#metrics;
  }

  connect(result: 'ok' | 'error' | 'timeout'): CounterChild {
    return cached(this.#connects, result, () => this.#metrics.upstreamConnects.labels(this.#route, result));
  }

  eviction(reason: EvictionReason): CounterChild {
    return cached(this.#evictions, reason, () => this.#metrics.evictions.labels(this.#route, reason));
  }

  heartbeat(result: string): CounterChild {
    return cached(this.#heartbeats, result, () => this.#metrics.heartbeats.labels(this.#route, result));
  }
}

function cached(map: Map<string, CounterChild>, key: string, make: () => CounterChild): CounterChild {
  let child = map.get(key);
  if (!child) map.set(key, (child = make()));
  return child;
}
