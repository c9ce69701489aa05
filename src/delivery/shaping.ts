import { randomUUID } from 'node:crypto';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { Counter, Gauge, METRIC_PREFIX, type Logger } from '../observability/index.ts';
import { failure, type Outcome } from '../smtp/index.ts';
import type { SharedStore } from '../redis/index.ts';
import type { ProviderConfig } from './providers.ts';


/** Sessions kept in Redis live this long unless renewed: a replica that dies frees its share soon. */
const LEASE_MS = 60_000;
/** After a pause, one more session for every this many deliveries that succeed. */
const RAMP_STEP = 10;
/** How long the ramp is remembered after a pause ends, if deliveries stop altogether. */
const RAMP_MEMORY_MS = 60 * 60_000;

const PREFIX = 'hygiene-relay:shaping:v1:';

/**
 * Takes a session slot when fewer than `max` are held: the sorted set holds one member per
 * open session scored by when its lease ends; expired leases are dropped first. Time is
 * Redis's own, so replicas whose clocks differ agree on what has expired.
 * ARGV: max, lease ms, member.
 */
const ACQUIRE = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2] * 2)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ARGV[2], ARGV[3])
  return 1
end
return 0`;

/** Extends this replica's leases (ARGV: lease ms, members…), and the set with them. */
const RENEW = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + ARGV[1], ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1] * 2)
return 0`;

interface Pause {
  /** Epoch ms: no session may open before then. */
  until: number;
  /** Deliveries that succeeded since; the session limit grows back with them. */
  successes: number;
}

/** A session slot held for one upstream session; give it back when the session ends. */
export interface SessionSlot {
  release(): void;
}

/** What shaping reads of a provider: all of it plain data, so a worker can send it to its supervisor. */
export type ShapingLimits = Pick<ProviderConfig, 'name' | 'maxSessions' | 'messagesPerMinute' | 'backoff'>;

/**
 * What the upstream pool asks of shaping. `ShapingState` answers it in this process or
 * through Redis; a worker of a supervisor without Redis asks the supervisor's one
 * (src/supervisor/), so that every worker keeps the same limits.
 */
export interface Shaper {
  /** Before a message is forwarded: refused while the provider is paused or over its rate. */
  admitMessage(provider: ShapingLimits, egressIp: string): Promise<Outcome | undefined>;
  /** A slot for a new session, or why there is none now: paused (no use waiting), or every slot taken. */
  trySession(provider: ShapingLimits, egressIp: string): Promise<SessionSlot | { refused: Outcome; paused: boolean }>;
  /** The message was not sent after all (no session, no connection): its point is given back. */
  refund(provider: ShapingLimits, egressIp: string): Promise<void>;
  /** The provider answered with a rate-limit reply: pause it for its back-off period, and the ramp starts over. */
  throttled(provider: ShapingLimits, egressIp: string, reply: string): Promise<void>;
  /** A delivery succeeded: once a pause is over, each few of them allow one more session. */
  delivered(provider: ShapingLimits, egressIp: string): Promise<void>;
  close(): void;
}

/**
 * Per provider and egress IP (DESIGN §5): at most `maxSessions` upstream sessions and
 * `messagesPerMinute` messages across every replica (Redis when configured, this process
 * otherwise), and a pause when the provider itself says to slow down, after which sessions
 * come back one at a time (Gmail's published advice for 421-4.7.28). The client hears
 * `451 4.7.0` before anything reaches the provider.
 */
const limited = new Counter({
  name: `${METRIC_PREFIX}shaping_limited_total`,
  help: "Messages and sessions held back by a provider's limits, by provider and limit: paused (it asked the relay to slow down), rate (messages a minute), sessions (concurrent sessions)",
  labelNames: ['provider', 'limit'],
});
const shapers = new Set<ShapingState>();
new Gauge({
  name: `${METRIC_PREFIX}shaping_pauses`,
  help: 'Pauses in force now, per provider: egress addresses from which delivery to it waits out its back-off',
  labelNames: ['provider'],
  collect() {
    this.reset();
    const now = Date.now();
    const paused = new Map<string, Set<string>>();
    for (const shaper of shapers) {
      for (const [key, pause] of shaper.pauses()) {
        if (pause.until <= now) continue;
        const provider = key.slice(0, key.indexOf(':'));
        paused.set(provider, (paused.get(provider) ?? new Set()).add(key));
      }
    }
    for (const [provider, keys] of paused) this.set({ provider }, keys.size);
  },
});

export class ShapingState implements Shaper {
  #shared: SharedStore | undefined;
  #logger: Logger;
  #limiters = new Map<string, RateLimiterMemory | RateLimiterRedis>();
  /** In-process sessions per key (also the fallback when Redis is away). */
  #local = new Map<string, Set<string>>();
  #pauses = new Map<string, Pause>();
  /** The shared pause as Redis last gave it, per key. */
  #seen = new Map<string, Pause>();
  /** Lease ids held in Redis by this process, renewed while their sessions live. */
  #leases = new Map<string, Set<string>>();
  #renewal: NodeJS.Timeout;

  constructor(options: { shared?: SharedStore; logger: Logger }) {
    this.#shared = options.shared;
    this.#logger = options.logger.child({ component: 'shaping' });
    this.#renewal = setInterval(() => void this.#renew(), LEASE_MS / 3).unref();
    shapers.add(this);
  }

  close(): void {
    clearInterval(this.#renewal);
    shapers.delete(this);
  }

  /** The pauses this process set or last saw in Redis, by `provider:egress`. */
  *pauses(): Iterable<[string, Pause]> {
    yield* this.#pauses;
    yield* this.#seen;
  }

  async admitMessage(provider: ShapingLimits, egressIp: string): Promise<Outcome | undefined> {
    const key = `${provider.name}:${egressIp}`;
    const pause = await this.#pause(key);
    if (pause && pause.until > Date.now()) {
      limited.inc({ provider: provider.name, limit: 'paused' });
      return failure('temporary', 451, '4.7.0', `delivery to ${provider.name} from ${egressIp} is paused until ${new Date(pause.until).toISOString()} because ${provider.name} asked the relay to slow down; try again later`);
    }
    try {
      await this.#limiter(provider).consume(key);
      return undefined;
    } catch (err) {
      if (!(err instanceof RateLimiterRes)) throw err;
      const seconds = Math.ceil(err.msBeforeNext / 1000);
      limited.inc({ provider: provider.name, limit: 'rate' });
      return failure('temporary', 451, '4.7.0', `${provider.name} takes at most ${provider.messagesPerMinute} messages a minute from ${egressIp}; that is reached, try again in ${seconds} s`);
    }
  }

  async trySession(provider: ShapingLimits, egressIp: string): Promise<SessionSlot | { refused: Outcome; paused: boolean }> {
    const key = `${provider.name}:${egressIp}`;
    const limit = await this.#sessionLimit(provider, key);
    const slot = limit > 0 ? await this.#acquire(key, limit) : undefined;
    if (slot) return slot;
    limited.inc({ provider: provider.name, limit: limit === 0 ? 'paused' : 'sessions' });
    const why = limit === 0 ? 'is paused' : `already has ${limit} session${limit === 1 ? '' : 's'} open`;
    return { refused: failure('temporary', 451, '4.7.0', `delivery to ${provider.name} from ${egressIp} ${why}; try again later`), paused: limit === 0 };
  }

  async refund(provider: ShapingLimits, egressIp: string): Promise<void> {
    await this.#limiter(provider)
      .reward(`${provider.name}:${egressIp}`)
      .catch(() => undefined);
  }

  async throttled(provider: ShapingLimits, egressIp: string, reply: string): Promise<void> {
    const key = `${provider.name}:${egressIp}`;
    const pause: Pause = { until: Date.now() + provider.backoff, successes: 0 };
    this.#logger.warn({ provider: provider.name, egress: egressIp, until: new Date(pause.until).toISOString(), reply }, 'provider asked to slow down: pausing deliveries to it from this egress');
    this.#pauses.set(key, pause);
    await this.#redis((redis) =>
      redis
        .multi()
        .set(PREFIX + 'pause:' + key, JSON.stringify({ until: pause.until }), 'PX', provider.backoff + RAMP_MEMORY_MS)
        .del(PREFIX + 'ramp:' + key)
        .exec(),
    );
  }

  async delivered(provider: ShapingLimits, egressIp: string): Promise<void> {
    const key = `${provider.name}:${egressIp}`;
    const local = this.#pauses.get(key);
    // Deliveries that were already under way when the pause began do not count.
    if (local && local.until <= Date.now() && ++local.successes >= (provider.maxSessions - 1) * RAMP_STEP) this.#pauses.delete(key);
    // Counted in Redis only while ramping back, as the last look at the shared pause saw it:
    // most deliveries happen with no pause at all and cost nothing here.
    const seen = this.#seen.get(key);
    if (!seen || seen.until > Date.now()) return;
    await this.#redis((redis) => redis.multi().incr(PREFIX + 'ramp:' + key).pexpire(PREFIX + 'ramp:' + key, provider.backoff + RAMP_MEMORY_MS).exec());
  }

  async #pause(key: string): Promise<Pause | undefined> {
    const shared = await this.#redis(async (redis) => {
      const [pause, ramp] = await redis.mget(PREFIX + 'pause:' + key, PREFIX + 'ramp:' + key);
      if (pause === null) return null;
      return { until: Number((JSON.parse(pause) as Pause).until), successes: Number(ramp ?? 0) };
    });
    if (shared === undefined) return this.#pauses.get(key);
    if (shared) this.#seen.set(key, shared);
    else this.#seen.delete(key);
    return shared ?? undefined;
  }

  async #sessionLimit(provider: ShapingLimits, key: string): Promise<number> {
    const pause = await this.#pause(key);
    if (!pause) return provider.maxSessions;
    if (pause.until > Date.now()) return 0;
    return Math.min(provider.maxSessions, 1 + Math.floor(pause.successes / RAMP_STEP));
  }

  async #acquire(key: string, limit: number): Promise<SessionSlot | undefined> {
    const id = randomUUID();
    const shared = await this.#redis(async (redis) => (await redis.eval(ACQUIRE, 1, PREFIX + 'sessions:' + key, limit, LEASE_MS, id)) === 1);
    if (shared === false) return undefined;
    if (shared === true) {
      const held = this.#leases.get(key) ?? new Set();
      held.add(id);
      this.#leases.set(key, held);
      return { release: () => this.#release(key, id, held) };
    }
    // Redis away: this replica counts its own sessions, those it holds through Redis included.
    const local = this.#local.get(key) ?? new Set<string>();
    if (local.size + (this.#leases.get(key)?.size ?? 0) >= limit) return undefined;
    local.add(id);
    this.#local.set(key, local);
    return { release: () => this.#release(key, id, local) };
  }

  #release(key: string, id: string, held: Set<string>): void {
    if (!held.delete(id)) return;
    void this.#redis((redis) => redis.zrem(PREFIX + 'sessions:' + key, id));
  }

  async #renew(): Promise<void> {
    for (const [key, ids] of this.#leases) {
      if (ids.size === 0) continue;
      await this.#redis((redis) => redis.eval(RENEW, 1, PREFIX + 'sessions:' + key, LEASE_MS, ...ids));
    }
  }

  #limiter(provider: ShapingLimits): RateLimiterMemory | RateLimiterRedis {
    // Keyed by the limit too: a reload that changes it takes effect.
    const name = `${provider.name}:${provider.messagesPerMinute}`;
    let limiter = this.#limiters.get(name);
    if (!limiter) {
      const options = { points: provider.messagesPerMinute, duration: 60, keyPrefix: `${PREFIX}rate` };
      const memory = new RateLimiterMemory(options);
      // Redis away: each replica limits on its own until it is back (rate-limiter-flexible's insurance).
      limiter = this.#shared ? new RateLimiterRedis({ ...options, storeClient: this.#shared.client, insuranceLimiter: memory, rejectIfRedisNotReady: true }) : memory;
      this.#limiters.set(name, limiter);
    }
    return limiter;
  }

  /** Runs a Redis step; undefined when there is no Redis or it failed (the caller uses its own state). */
  async #redis<T>(step: (redis: SharedStore['client']) => Promise<T>): Promise<T | undefined> {
    if (!this.#shared) return undefined;
    try {
      return await step(this.#shared.client);
    } catch (err) {
      this.#shared.failed(err);
      return undefined;
    }
  }
}
