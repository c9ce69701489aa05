import { pino, type Logger, type DestinationStream } from 'pino';
import { createRequire } from 'node:module';
import { recordLine } from './line.ts';

export type { Logger } from 'pino';
export { recordLine, replyCode, transactionLine } from './line.ts';

/** `log.format`: JSON lines (for machines and `hygiene-relay logs`), pino-pretty's multi-line view, or one line per record. */
export type LogFormat = 'json' | 'pretty' | 'line';

/**
 * The one logger of the process: records on stdout (or the given stream), passed down to
 * every part. pino always writes JSON; the pretty and line formats rewrite each JSON line in
 * this process, synchronously, into the same stream, so flushing and the flush at exit stay
 * those of the JSON stream and no worker thread is started.
 */
export function createLogger(level: string, destination?: DestinationStream, format: LogFormat = 'json'): Logger {
  return pino(
    {
      level,
      base: { service: 'hygiene-relay' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    logStream(format, destination),
  );
}

/**
 * Where records go: stdout (or `destination`), each JSON line written to it rewritten into
 * `format`. A supervisor writes its own records and its workers' JSON lines into one, whole
 * lines each, so that the one log stream never mixes two records in a line.
 */
export function logStream(format: LogFormat, destination?: DestinationStream): DestinationStream {
  const stream = destination ?? pino.destination({ dest: 1, sync: false });
  return format === 'json' ? stream : rewriting(stream, format === 'pretty' ? pretty() : (line) => `${recordLine(JSON.parse(line) as Record<string, unknown>)}\n`);
}

/**
 * pino-pretty's view; times stay as recorded (ISO 8601, UTC) so that every format shows the
 * same ones. Loaded only for this format (~10 MB that a JSON-logging relay does not need),
 * synchronously, because the logger is made before anything else can wait.
 */
function pretty(): (line: string) => string {
  const { prettyFactory } = createRequire(import.meta.url)('pino-pretty') as typeof import('pino-pretty');
  return prettyFactory({ ignore: 'service', translateTime: false });
}

function rewriting(stream: DestinationStream, rewrite: (line: string) => string): DestinationStream {
  const flushable = stream as DestinationStream & { flush?: (cb: (err?: Error) => void) => void };
  return {
    // A line that is no record (printed by a worker's dependency) is kept as it came: it must not stop the supervisor.
    write: (line: string) => stream.write(line.startsWith('{') ? rewrite(line) : line),
    ...(flushable.flush && { flush: (cb: (err?: Error) => void) => flushable.flush!(cb) }),
  };
}
export { HttpServer, type Readiness } from './http.ts';
export { aggregateExposition, Counter, Gauge, Histogram, localMetrics, METRIC_PREFIX, SECONDS_BUCKETS, type Exposition, type MetricsJson } from './metrics.ts';
