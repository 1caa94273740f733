import type client from 'prom-client';

// A histogram for series observed on the request path, read by prom-client's registry
// like its own (same exposition: `_bucket{le=...,<labels>}` cumulative, `_sum`, `_count`).
// prom-client's Histogram rebuilds and hashes the label set on every observation (about
// 0.8 us, the largest single cost of an HTTP request through the proxy after the socket
// writes); here a series is bound once by labels() and an observation is a bucket search
// and three additions.

export interface HistogramConfig<L extends string> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly L[];
  /** Upper bounds, ascending (the +Inf bucket is implicit). */
  readonly buckets: readonly number[];
  readonly registers: readonly client.Registry[];
}

/** One label set's counts. */
class Series {
  readonly labels: Record<string, string>;
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  readonly #bounds: readonly number[];

  constructor(labels: Record<string, string>, bounds: readonly number[]) {
    this.labels = labels;
    this.#bounds = bounds;
    this.counts = new Float64Array(bounds.length);
  }

  observe(value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${value}`);
    const bounds = this.#bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= bounds[i]!) {
        this.counts[i]!++;
        break;
      }
    }
    this.sum += value;
    this.count++;
  }
}

interface ExportedValue {
  readonly value: number;
  readonly labels: Record<string, string | number>;
  readonly metricName: string;
}

export class FastHistogram<L extends string> {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly labelNames: readonly L[];
  readonly #bounds: readonly number[];
  readonly #series = new Map<string, Series>();

  constructor(config: HistogramConfig<L>) {
    this.name = config.name;
    this.help = config.help;
    this.labelNames = config.labelNames;
    this.#bounds = [...config.buckets];
    for (const registry of config.registers) registry.registerMetric(this as unknown as client.Metric);
  }

  /** The series of these label values (in labelNames order), created on first use. */
  labels(...values: string[]): { observe(value: number): void } {
    if (values.length !== this.labelNames.length) throw new Error(`${this.name}: expected ${this.labelNames.length} label values, got ${values.length}`);
    const key = values.join('\u0000');
    let series = this.#series.get(key);
    if (!series) {
      const labels: Record<string, string> = {};
      this.labelNames.forEach((name, i) => (labels[name] = values[i]!));
      series = new Series(labels, this.#bounds);
      this.#series.set(key, series);
    }
    return series;
  }

  /** What prom-client's registry reads (Metric.get). */
  get(): { name: string; help: string; type: string; aggregator: string; values: ExportedValue[] } {
    const values: ExportedValue[] = [];
    const bucketName = `${this.name}_bucket`;
    for (const series of this.#series.values()) {
      let cumulative = 0;
      this.#bounds.forEach((bound, i) => {
        cumulative += series.counts[i]!;
        values.push({ value: cumulative, labels: { le: bound, ...series.labels }, metricName: bucketName });
      });
      values.push({ value: series.count, labels: { le: '+Inf', ...series.labels }, metricName: bucketName });
      values.push({ value: series.sum, labels: { ...series.labels }, metricName: `${this.name}_sum` });
      values.push({ value: series.count, labels: { ...series.labels }, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {
    this.#series.clear();
  }
}
