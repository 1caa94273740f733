import { AggregatorRegistry, type Registry } from 'prom-client';
import { PREFIX } from '../metrics/registry.js';
import type { MetricsJson } from './messages.js';

// One /metrics for a primary and its workers: prom-client's cluster aggregator, fed with
// each process's registry as JSON. Each metric says how its series combine (`aggregator`):
// counters, histograms and gauges such as connections_active add up; build_info and the
// version info take one process's value. The metrics whose sum means nothing are below.
//
// A worker that exits takes its counts with it, and a total that drops reads as a counter
// reset to Prometheus (rate() would then count the survivors' whole totals as new). So the
// counters and histograms of an exited worker, as last scraped, are kept and added to
// every later exposition: totals never go down. Counts made after that last scrape are lost.

/** Default metrics whose prom-client aggregator does not fit a process tree. */
const AGGREGATOR_OVERRIDES: Readonly<Record<string, string>> = {
  // prom-client omits it; the oldest process (the primary) says when the proxy started.
  [`${PREFIX}process_start_time_seconds`]: 'min',
  // A per-process limit, not an amount: the sum of the limits means nothing.
  [`${PREFIX}process_max_fds`]: 'min',
  // heartbeat: { every: auto }: each worker learns the path on its own; the safe reading of
  // a path's idle timeout and of the interval in force is the smallest any worker holds.
  [`${PREFIX}path_idle_timeout_seconds`]: 'min',
  [`${PREFIX}heartbeat_interval_seconds`]: 'min',
  // Each worker's HTTP pool learns its upstreams' close-after-idle on its own: the shortest holds.
  [`${PREFIX}pool_learned_idle_timeout_seconds`]: 'min',
};

const MONOTONIC_TYPES: ReadonlySet<string> = new Set(['counter', 'histogram']);

export class MetricsAggregate {
  /** The counters and histograms of every worker that has exited, summed. */
  #retired: MetricsJson = [];

  /** Adds an exited worker's last scraped counters and histograms to the kept totals. */
  async retire(last: MetricsJson): Promise<void> {
    const monotonic = last.filter((metric) => MONOTONIC_TYPES.has(String(metric.type)));
    if (monotonic.length === 0) return;
    this.#retired = await AggregatorRegistry.aggregate([this.#retired, monotonic]).getMetricsAsJSON();
  }

  /** The exposition of the primary's own registry, the retired totals and each live worker's metrics. */
  async exposition(own: Registry, workers: readonly MetricsJson[]): Promise<string> {
    const all = [await own.getMetricsAsJSON(), this.#retired, ...workers].map(withOverrides);
    return AggregatorRegistry.aggregate(all).metrics();
  }
}

function withOverrides(metrics: MetricsJson): MetricsJson {
  return metrics.map((metric) => {
    const aggregator = AGGREGATOR_OVERRIDES[metric.name];
    return aggregator ? ({ ...metric, aggregator } as typeof metric) : metric;
  });
}
