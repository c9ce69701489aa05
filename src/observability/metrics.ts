import { AggregatorRegistry, collectDefaultMetrics, register } from 'prom-client';

// Each metric is declared in the file that counts it (README, "Metrics"), in prom-client's
// registry of the process; this file only serves them. Labels stay bounded: results,
// categories and names from the config or the shipped data, never an address.
export { Counter, Gauge, Histogram } from 'prom-client';

/** Every metric of the relay's own starts so: one namespace on a shared Prometheus. */
export const METRIC_PREFIX = 'hygiene_relay_';

/** Durations from a millisecond to a minute: DKIM signing at the one end, a slow destination at the other. */
export const SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

let processMetrics = false;

function withProcessMetrics(): void {
  if (processMetrics) return;
  processMetrics = true;
  collectDefaultMetrics();
}

export interface Exposition {
  contentType: string;
  body: string;
}

/** The exposition (text format 0.0.4) of every metric, the process's CPU, memory and event loop included. */
export async function exposition(): Promise<Exposition> {
  withProcessMetrics();
  return { contentType: register.contentType, body: await register.metrics() };
}

/** Every metric of this process as data: what a worker sends its supervisor. */
export type MetricsJson = Awaited<ReturnType<typeof register.getMetricsAsJSON>>;

export function localMetrics(): Promise<MetricsJson> {
  withProcessMetrics();
  return register.getMetricsAsJSON();
}

/**
 * One exposition of several processes' metrics (a supervisor's workers'): prom-client's
 * AggregatorRegistry sums each sample over them, unless the metric names another aggregator
 * (`aggregator: 'min'` where one process's 0 is the answer).
 */
export async function aggregateExposition(processes: MetricsJson[]): Promise<Exposition> {
  const aggregated = AggregatorRegistry.aggregate(processes);
  return { contentType: aggregated.contentType, body: await aggregated.metrics() };
}
