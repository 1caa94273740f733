import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import type { RouteMetrics } from '../metrics/route-metrics.js';
import type { Exchange, ExchangeHost } from './exchange.js';

// What the exchanges of one HTTP route (exchange.ts: a request over the pool) report to
// it, and the exchanges still reading a response whose client left: the route's clock
// ticks them until they finish and give their connection back to the pool.

export class RouteExchanges implements ExchangeHost {
  readonly route: string;
  readonly log: Logger;
  readonly clock: Clock;
  readonly #metrics: RouteMetrics;
  /** Exchanges still reading a response whose client left (they go back to the pool after). */
  readonly #orphans = new Set<Exchange>();

  constructor(route: string, log: Logger, clock: Clock, metrics: RouteMetrics) {
    this.route = route;
    this.log = log;
    this.clock = clock;
    this.#metrics = metrics;
  }

  answered(status: number): void {
    this.#metrics.request(status).inc();
  }

  observeUpstreamSeconds(seconds: number): void {
    this.#metrics.upstreamRequestSeconds.observe(seconds);
  }

  retried(reason: string): void {
    this.#metrics.retry(reason).inc();
  }

  orphaned(exchange: Exchange): void {
    this.#orphans.add(exchange);
  }

  finished(exchange: Exchange): void {
    this.#orphans.delete(exchange);
  }

  tick(now: number): void {
    for (const exchange of this.#orphans) exchange.tick(now);
  }
}
