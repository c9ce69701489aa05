import cluster, { type Worker } from 'node:cluster';
import type { Readable } from 'node:stream';
import { loadConfig, type Config } from '../config/index.ts';
import type { Hold } from '../abuse/index.ts';
import { ControlServer, controlCommands } from '../control/index.ts';
import type { FlushCount } from '../dns/index.ts';
import { aggregateExposition, Counter, createLogger, Gauge, HttpServer, localMetrics, logStream, METRIC_PREFIX, type Logger, type MetricsJson, type Readiness } from '../observability/index.ts';
import { checkReload } from '../relay.ts';
import { Channel } from './channel.ts';
import { SharedState } from './state.ts';

export { joinSupervisor } from './worker.ts';

/** A worker that lived this long before it exited was not crash-looping: its replacement starts at once. */
const STABLE_MS = 30_000;
const MAX_BACKOFF_MS = 30_000;
/** /readyz waits this long for a worker's answer; one that is slower counts as unready. */
const READINESS_TIMEOUT_MS = 2000;
/** doctor's checks wait for DNS answers, each up to the resolver's timeout and tries. */
const DOCTOR_TIMEOUT_MS = 120_000;

const workersUp = new Gauge({
  name: `${METRIC_PREFIX}workers`,
  help: 'Worker processes running under the supervisor (started, not yet exited)',
});
const restarts = new Counter({
  name: `${METRIC_PREFIX}worker_restarts_total`,
  help: 'Workers that exited unexpectedly, each started again',
});
/** Of the supervisor's own metrics, the relay's that it counts: the workers, and shaping it holds for them. */
const SUPERVISOR_METRICS = [`${METRIC_PREFIX}worker`, `${METRIC_PREFIX}shaping_`];

interface Running {
  worker: Worker;
  channel: Channel;
  /** Which of the `count` workers it is, for the crash-loop back-off. */
  slot: number;
  forked: number;
  ports?: number[];
}

/**
 * Writes a worker's standard output into the log stream whole lines at a time, so records of
 * two workers never mix within a line. Resolves when the output ends (the worker is gone).
 */
function forward(input: Readable, out: { write(line: string): unknown }, logger: Logger, worker: number): Promise<void> {
  let rest = '';
  input.setEncoding('utf8');
  input.on('data', (chunk: string) => {
    const lines = (rest + chunk).split('\n');
    rest = lines.pop()!;
    for (const line of lines) if (line) out.write(`${line}\n`);
  });
  return new Promise((resolve) =>
    input.once('close', () => {
      // A record cut by a SIGKILL is no record: not passed on as one.
      if (rest) logger.warn({ worker, bytes: rest.length }, 'a worker record was cut short by its exit');
      resolve();
    }),
  );
}

function sumFlushes(counts: FlushCount[]): FlushCount {
  const redis = counts.filter((c) => c.redis !== undefined);
  const redisError = counts.find((c) => c.redisError)?.redisError;
  return {
    memory: counts.reduce((sum, c) => sum + c.memory, 0),
    ...(redis.length && { redis: redis.reduce((sum, c) => sum + c.redis!, 0) }),
    ...(redisError && { redisError }),
  };
}

/** The workers' holds as one list: a hold in the shared store is each worker's, once here. */
function distinctHolds(lists: Hold[][]): Hold[] {
  const byKey = new Map(lists.flat().map((hold) => [`${hold.kind}:${hold.who}`, hold]));
  return [...byKey.values()].sort((a, b) => a.since - b.since);
}

/**
 * `workers` > 1: this process forks the relay `count` times with node:cluster (the workers
 * share the listeners; the supervisor hands each new connection to the next worker in turn)
 * and is the relay's face to the host: the HTTP port (/metrics summed over the workers,
 * /readyz from each worker's readiness), the control socket, the one log stream, the
 * signals, and the state the workers share without Redis (state.ts). A worker that crashes
 * is replaced; its connections dropped with it, and none had been answered 250 for a message
 * still in flight, so their clients send them again.
 */
export async function supervise(file: string, config: Config, count: number): Promise<void> {
  const out = logStream(config.log.format);
  const logger = createLogger(config.log.level, out);
  // Workers write JSON records to a pipe of their own; their stderr (Node's warnings, a failed start's one line) is the supervisor's.
  cluster.setupPrimary({ stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  const state = new SharedState(config, logger);
  const running = new Map<number, Running>();
  const outputs = new Set<Promise<void>>();
  const quickExits = new Array<number>(count).fill(0);
  const restartTimers = new Set<NodeJS.Timeout>();
  let started = false;
  let stopping = false;
  let exitCode = 0;
  let http: HttpServer | undefined;
  let control: ControlServer | undefined;
  let allStarted!: () => void;
  const firstStart = new Promise<void>((resolve) => (allStarted = resolve));

  const up = () => [...running.values()].filter((r) => r.ports);

  const finish = async () => {
    await Promise.all(outputs);
    await Promise.all([http?.close(), control?.close()]);
    state.close();
    logger.info({ exitCode }, 'every worker has exited');
    logger.flush();
    process.exit(exitCode);
  };

  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    for (const timer of restartTimers) clearTimeout(timer);
    for (const r of running.values()) r.worker.process.kill(signal);
    if (running.size === 0) void finish();
  };

  const fork = (slot: number) => {
    const worker = cluster.fork();
    const channel = new Channel({ send: (message, callback) => worker.send(message, undefined, undefined, callback) });
    const r: Running = { worker, channel, slot, forked: Date.now() };
    running.set(worker.id, r);
    logger.info({ worker: worker.id, pid: worker.process.pid }, 'worker forked');
    channel.handle({
      ...state.handlers(worker.id),
      started: (ports: number[]) => {
        r.ports = ports;
        workersUp.set(up().length);
        if (!started && up().length === count) {
          started = true;
          allStarted();
        }
      },
    });
    worker.on('message', (message) => channel.receive(message));
    const output = forward(worker.process.stdout!, out, logger, worker.id);
    outputs.add(output);
    void output.then(() => outputs.delete(output));
    worker.once('exit', (code, signal) => {
      running.delete(worker.id);
      channel.close('the worker exited');
      state.release(worker.id);
      workersUp.set(up().length);
      if (stopping) {
        if (running.size === 0) void finish();
        return;
      }
      if (!started) {
        // A worker that cannot start says why on stderr, as a single relay would; the others stop too.
        exitCode = code || 1;
        logger.fatal({ worker: worker.id, code, signal }, 'a worker did not start: stopping');
        return stop('SIGTERM');
      }
      quickExits[slot] = Date.now() - r.forked < STABLE_MS ? quickExits[slot] + 1 : 1;
      const delay = quickExits[slot] <= 1 ? 0 : Math.min(1000 * 2 ** (quickExits[slot] - 2), MAX_BACKOFF_MS);
      restarts.inc();
      logger.error({ worker: worker.id, pid: worker.process.pid, code, signal, restartIn: `${delay / 1000}s` }, 'worker exited unexpectedly: starting another');
      const timer = setTimeout(() => {
        restartTimers.delete(timer);
        fork(slot);
      }, delay);
      restartTimers.add(timer);
    });
  };

  const readiness = async (): Promise<Readiness> => {
    const problems: string[] = [];
    const degraded: string[] = [];
    if (stopping) problems.push('draining: finishing the transactions in flight before exit');
    else if (!started) problems.push('starting');
    const live = up();
    if (live.length < count) problems.push(`${live.length} of ${count} workers running`);
    await Promise.all(
      live.map(async ({ worker, channel }) => {
        const answer = await channel.callWithin<Readiness>(READINESS_TIMEOUT_MS, 'readiness').catch((err: Error) => ({ problems: [`no answer: ${err.message}`], degraded: [] }));
        problems.push(...answer.problems.map((p) => `worker ${worker.id}: ${p}`));
        degraded.push(...answer.degraded.map((d) => `worker ${worker.id}: ${d}`));
      }),
    );
    return { problems, degraded };
  };

  const metrics = async () => {
    // A worker that cannot answer now (exiting) is left out of this scrape.
    const workers = await Promise.all(up().map(({ channel }) => channel.call<MetricsJson>('metrics').catch(() => [])));
    const own = (await localMetrics()).filter((m) => !m.name.startsWith(METRIC_PREFIX) || SUPERVISOR_METRICS.some((name) => m.name.startsWith(name)));
    return aggregateExposition([...workers, own]);
  };

  const doctor = () => {
    const first = up()[0];
    if (!first) return;
    // Once for the host, in one worker: it holds the resolver and the keys the checks need.
    first.channel.callWithin(DOCTOR_TIMEOUT_MS, 'doctor').catch((err: Error) => logger.error({ worker: first.worker.id, error: err.message }, 'DNS checks failed to run'));
  };

  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // SIGHUP: checked here first, so that a broken file changes nothing in any worker.
  process.on('SIGHUP', () => {
    if (stopping) return;
    try {
      checkReload(loadConfig(file));
    } catch (err) {
      logger.error({ error: (err as Error).message }, 'reload refused: the running configuration stays in use');
      return;
    }
    // In order on each channel: the first worker's checks run on what it has just reloaded.
    for (const { channel } of up()) channel.notify('reload');
    doctor();
  });

  try {
    if (config.http) http = await HttpServer.listen(config.http, { readiness, metrics }, logger);
  } catch (err) {
    logger.fatal({ err }, 'relay did not start');
    logger.flush();
    throw err;
  }
  for (let slot = 0; slot < count; slot++) fork(slot);
  await firstStart;
  control = config.control.socket
    ? await ControlServer.listen(
        config.control.socket,
        controlCommands({
          flushDns: async () => sumFlushes(await Promise.all(up().map(({ channel }) => channel.call<FlushCount>('dns flush')))),
          // Every worker answers: the same holds from a shared store, each its own from memory.
          abuse: {
            holds: async () => distinctHolds(await Promise.all(up().map(({ channel }) => channel.call<Hold[]>('abuse holds')))),
            release: async (who) => distinctHolds(await Promise.all(up().map(({ channel }) => channel.call<Hold[]>('abuse release', who)))),
          },
        }),
        logger,
      )
    : undefined;
  logger.info({ ports: up()[0].ports, httpPort: http?.port, config: file, workers: count }, 'relay started');
  doctor();
}
