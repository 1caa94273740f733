import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics/registry.js';
import { MetricsAggregate } from '../../src/workers/aggregate.js';
import { parseMetrics, sample } from '../helpers/proxy.js';

// With workers, each process learns on its own: the aggregated /metrics shows the smallest
// learned value (the safe one), never the sum of the workers'.
describe('workers: learned values aggregate to the smallest', () => {
  it('pool_learned_idle_timeout_seconds, path_idle_timeout_seconds and heartbeat_interval_seconds', async () => {
    const primary = new Metrics(false);
    const workers = [new Metrics(false), new Metrics(false), new Metrics(false)];
    const learned = [7.5, 2.25, 4];
    workers.forEach((worker, i) => {
      worker.poolLearnedIdleTimeout.labels('web').set(learned[i]!);
      worker.pathIdleTimeout.labels('db').set(learned[i]! * 10);
      worker.heartbeatInterval.labels('db').set(learned[i]!);
    });
    const text = await new MetricsAggregate().exposition(primary.registry, await Promise.all(workers.map((w) => w.registry.getMetricsAsJSON())));
    const values = parseMetrics(text);
    expect(sample(values, 'keepalive_proxy_pool_learned_idle_timeout_seconds', { route: 'web' })).toBe(2.25);
    expect(sample(values, 'keepalive_proxy_path_idle_timeout_seconds', { route: 'db' })).toBe(22.5);
    expect(sample(values, 'keepalive_proxy_heartbeat_interval_seconds', { route: 'db' })).toBe(2.25);
  });
});
