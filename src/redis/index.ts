import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import type { RedisSettings } from '../config/index.ts';
import { Gauge, METRIC_PREFIX, type Logger } from '../observability/index.ts';

/**
 * The Redis state replicas share (DNS cache, delivery memo). Every user of it treats Redis
 * as an accelerator, never a dependency: commands fail fast instead of queueing while it is
 * away, and the caller carries on with its in-process state.
 */
export interface SharedStore {
  client: Redis | Cluster;
  /** Settles once the first connection attempt succeeded or failed: start-up waits for it, never longer. */
  ready: Promise<void>;
  /** Call on every failed command: the first failure of an outage logs one warning. */
  failed(err: unknown): void;
  /** Call after a command worked: ends an outage that never dropped the connection (a stall). */
  succeeded(): void;
  /** Connected, and the last command did not fail or stall. */
  readonly up: boolean;
  /** What it holds, as the outage warning names it ("DNS cache"). */
  readonly what: string;
  close(): void;
}

/** The stores open in this process: what /metrics and /readyz report on. */
const open = new Set<SharedStore>();

new Gauge({
  name: `${METRIC_PREFIX}redis_up`,
  help: 'Whether the Redis connection for this use (DNS cache, delivery memo, delivery state) answers: 1 up, 0 away (the relay carries on without it)',
  labelNames: ['use'],
  // Each worker has its own connection: 0 when any of them is away.
  aggregator: 'min',
  collect() {
    this.reset();
    for (const store of open) this.set({ use: store.what }, store.up ? 1 : 0);
  },
});

/** Every shared store of the process that is away right now, by what it holds. */
export function storesDown(): string[] {
  return [...open].filter((store) => !store.up).map((store) => store.what);
}

function clientFor(settings: RedisSettings, timeout: number): Redis | Cluster {
  const common: RedisOptions = {
    // A command while disconnected fails at once rather than waiting for a reconnect that
    // may take seconds; a slow server is bounded by the command timeout.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: timeout,
    // Start-up waits for the first attempt; an unreachable host must not hold it for long.
    connectTimeout: 2000,
  };
  if (typeof settings === 'string') return new Redis(settings, common);
  const tls = settings.tls ? {} : undefined;
  if ('sentinels' in settings) {
    return new Redis({
      ...common,
      sentinels: settings.sentinels,
      name: settings.name,
      password: settings.password,
      sentinelPassword: settings.sentinelPassword,
      db: settings.db,
      tls,
      enableTLSForSentinelMode: settings.tls,
    });
  }
  return new Cluster(settings.cluster, {
    enableOfflineQueue: false,
    redisOptions: { ...common, password: settings.password, tls },
  });
}

/**
 * Connects in the background (reconnecting on its own after an outage); `what` names the
 * user in the outage warning, e.g. "DNS cache".
 */
export function connectShared(settings: RedisSettings, options: { timeout: number; what: string; logger: Logger }): SharedStore {
  const client = clientFor(settings, options.timeout);
  const logger = options.logger;
  let down = false;
  const failed = (err: unknown) => {
    if (!down) logger.warn({ err: err instanceof Error ? err.message : String(err) }, `${options.what}: Redis unavailable, carrying on without it until it is back`);
    down = true;
  };
  const succeeded = () => {
    if (down) logger.info(`${options.what}: Redis is back`);
    down = false;
  };
  client.on('error', failed);
  client.on('ready', succeeded);
  const ready = new Promise<void>((resolve) => {
    client.once('ready', resolve);
    client.once('error', () => resolve());
  });
  const store: SharedStore = {
    client,
    ready,
    failed,
    succeeded,
    what: options.what,
    get up() {
      return client.status === 'ready' && !down;
    },
    close: () => {
      open.delete(store);
      client.disconnect();
    },
  };
  open.add(store);
  return store;
}

/** A limiter's settings, as both rate-limiter-flexible's in-process and its cluster limiters take them. */
export interface LimiterOptions {
  points: number;
  duration: number;
  keyPrefix: string;
}

/**
 * A counter in `shared` when there is one: while Redis is away each process counts alone
 * (rate-limiter-flexible's insurance limiter). Without it, `local`'s (this process's, or in
 * a worker its supervisor's).
 */
export function sharedLimiter(shared: SharedStore | undefined, options: LimiterOptions, local: (options: LimiterOptions) => RateLimiterAbstract): RateLimiterAbstract {
  if (!shared) return local(options);
  return new RateLimiterRedis({ ...options, storeClient: shared.client, insuranceLimiter: new RateLimiterMemory(options), rejectIfRedisNotReady: true });
}

/** Consumes `points` and answers the count either way: over its points, the limiter rejects with the same answer. */
export async function count(limiter: RateLimiterAbstract, key: string, points = 1, options?: { customDuration: number }): Promise<RateLimiterRes> {
  try {
    return await limiter.consume(key, points, options);
  } catch (res) {
    if (!(res instanceof RateLimiterRes)) throw res;
    return res;
  }
}
