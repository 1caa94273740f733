import { Metrics } from '../../src/metrics/registry.js';
import { RouteMetrics } from '../../src/metrics/route-metrics.js';
import { parseMetrics, sample } from './proxy.js';

// One route's metrics in a registry of their own, for unit tests of the rooms that count
// into them (pools, sessions), and a reader that flushes the batched counts first.

export interface TestRouteMetrics {
  readonly registry: Metrics;
  readonly route: RouteMetrics;
  /** One sample of keepalive_proxy_<name>{route, ...labels}, as a scrape would show it now. */
  metric(name: string, labels?: Record<string, string>): Promise<number>;
}

export function testRouteMetrics(routeName: string): TestRouteMetrics {
  const registry = new Metrics(false);
  const route = new RouteMetrics(registry, routeName);
  return {
    registry,
    route,
    metric: async (name, labels = {}) => {
      route.flush();
      return sample(parseMetrics(await registry.registry.metrics()), `keepalive_proxy_${name}`, { route: routeName, ...labels });
    },
  };
}
