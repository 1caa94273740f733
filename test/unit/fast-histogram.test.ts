import client from 'prom-client';
import { describe, expect, it } from 'vitest';
import { FastHistogram } from '../../src/metrics/fast-histogram.js';

// FastHistogram must read exactly like prom-client's Histogram in the exposition: same
// cumulative buckets, +Inf, _sum, _count, label order and escaping.

describe('FastHistogram', () => {
  it("exposes the same text as prom-client's Histogram for the same observations", async () => {
    const theirs = new client.Registry();
    const ours = new client.Registry();
    const spec = { name: 'kp_test_seconds', help: 'A test histogram.', labelNames: ['route'] as const, buckets: [0.001, 0.01, 0.1, 1] };
    const reference = new client.Histogram({ ...spec, registers: [theirs] });
    const fast = new FastHistogram({ ...spec, registers: [ours] });
    for (const value of [0.0004, 0.001, 0.0099, 0.5, 7, 0]) {
      for (const route of ['web', 'a "quoted" \\ route']) {
        reference.labels(route).observe(value);
        fast.labels(route).observe(value);
      }
    }
    expect(await ours.metrics()).toBe(await theirs.metrics());
    fast.reset();
    reference.reset();
    expect(await ours.metrics()).toBe(await theirs.metrics());
  });

  it('refuses what prom-client refuses', () => {
    const fast = new FastHistogram({ name: 'kp_test2_seconds', help: 'h', labelNames: ['route'], buckets: [1], registers: [] });
    expect(() => fast.labels('web').observe(Number.NaN)).toThrow(TypeError);
    expect(() => fast.labels()).toThrow();
  });
});
