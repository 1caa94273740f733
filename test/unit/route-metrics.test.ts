import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics/registry.js';
import { RouteMetrics } from '../../src/metrics/route-metrics.js';
import { parseMetrics, sample } from '../helpers/proxy.js';

// The TCP route's counters and gauges are batched: events add to plain numbers and
// flush() hands the sums to prom-client. What a scrape reads after a flush must equal
// what happened, in whatever order increments, decrements and sets came.

async function scrape(metrics: Metrics): Promise<Map<string, number>> {
  return parseMetrics(await metrics.registry.metrics());
}

describe('batched route metrics', () => {
  it('adds counters and gauge deltas only at flush, exactly', async () => {
    const metrics = new Metrics();
    const route = new RouteMetrics(metrics, 'r');
    for (let i = 0; i < 5; i++) route.accepted.inc();
    route.active.inc();
    route.active.inc();
    route.active.dec();
    route.eviction('peer_closed').inc();
    route.bytesUpstream.inc(100);
    route.bytesUpstream.inc(23);
    expect(sample(await scrape(metrics), 'keepalive_proxy_connections_accepted_total', { route: 'r' })).toBe(0);
    route.flush();
    const after = await scrape(metrics);
    expect(sample(after, 'keepalive_proxy_connections_accepted_total', { route: 'r' })).toBe(5);
    expect(sample(after, 'keepalive_proxy_connections_active', { route: 'r' })).toBe(1);
    expect(sample(after, 'keepalive_proxy_evictions_total', { route: 'r', reason: 'peer_closed' })).toBe(1);
    expect(sample(after, 'keepalive_proxy_bytes_total', { route: 'r', direction: 'upstream' })).toBe(123);
    route.accepted.inc();
    route.flush();
    route.flush();
    expect(sample(await scrape(metrics), 'keepalive_proxy_connections_accepted_total', { route: 'r' })).toBe(6);
  });

  it('applies a set and the moves after it, and keeps a gauge still when nothing moved', async () => {
    const metrics = new Metrics();
    const route = new RouteMetrics(metrics, 'r');
    route.poolIdle.inc(7);
    route.poolIdle.set(3);
    route.poolIdle.inc(2);
    route.flush();
    expect(sample(await scrape(metrics), 'keepalive_proxy_pool_idle', { route: 'r' })).toBe(5);
    route.flush();
    expect(sample(await scrape(metrics), 'keepalive_proxy_pool_idle', { route: 'r' })).toBe(5);
  });
});
