import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger } from 'pino';

/** The one logger of the process: JSON lines on stdout (or the given stream), passed down to every part. */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'hygiene-relay' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pino.destination({ dest: 1, sync: false }),
  );
}
