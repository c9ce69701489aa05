import { Cluster } from 'ioredis';
import { LRUCache } from 'lru-cache';
import { z } from 'zod';
import { Counter, METRIC_PREFIX, type Logger } from '../observability/index.ts';
import type { SharedStore } from '../redis/index.ts';
import { DnsLookupError, lookup, type CachedType, type RecordValue, type WireOptions } from './wire.ts';

/** What a question got: records, or a definite "no such name" / "no such record". */
export type Entry = { records: RecordValue[]; expires: number } | { code: 'ENOTFOUND' | 'ENODATA'; expires: number };

export interface CacheSettings {
  /** Milliseconds, all four. */
  minTtl: number;
  maxTtl: number;
  negativeTtl: number;
  maxEntries: number;
}

export type CacheLevel = 'memory' | 'redis';

/** What a flush dropped: entries per level; `redis` is absent without a shared level, or when Redis did not answer. */
export interface FlushCount {
  memory: number;
  redis?: number;
  /** Why the shared level was not flushed, when it was configured but unreachable. */
  redisError?: string;
}

const lookups = new Counter({
  name: `${METRIC_PREFIX}dns_cache_lookups_total`,
  help: 'DNS questions answered from a cache level (hit) or passed on from it (miss), by level (memory, redis) and record type',
  labelNames: ['level', 'type', 'result'],
});

/**
 * A cached "no such name / no such record" for one caller. It is DNS's answer, not a fault of
 * the relay: no stack trace is captured for it, which was most of the cost of such a hit.
 */
function answered(code: 'ENOTFOUND' | 'ENODATA', name: string, type: CachedType): DnsLookupError {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return new DnsLookupError(code, name, type);
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/** Records as the cache keeps them: nobody may change what later lookups get. */
function frozen(records: RecordValue[]): RecordValue[] {
  for (const record of records) Object.freeze(record);
  return Object.freeze(records) as RecordValue[];
}

/** One counter: the labels a metrics exporter needs, and the count. */
export interface CacheCount {
  level: CacheLevel;
  rrtype: string;
  result: 'hit' | 'miss';
  count: number;
}

const stringRecords = z.array(z.string());
const RECORDS: Record<CachedType, z.ZodType<RecordValue[]>> = {
  A: stringRecords,
  AAAA: stringRecords,
  CNAME: stringRecords,
  NS: stringRecords,
  PTR: stringRecords,
  MX: z.array(z.strictObject({ exchange: z.string(), priority: z.number().int(), type: z.literal('MX') })),
  TXT: z.array(z.array(z.string())),
};

/** A Redis entry holding `records`, or a negative answer. */
function entryShape(records: z.ZodType<RecordValue[]>) {
  return z.union([z.strictObject({ x: z.number(), r: records }), z.strictObject({ x: z.number(), e: z.enum(['ENOTFOUND', 'ENODATA']) })]);
}

/** Built once: every shared hit is checked against its type's shape. */
const ENTRIES = new Map(Object.entries(RECORDS).map(([type, records]) => [type, entryShape(records)]));

/**
 * Redis entries: `x` when it expires (epoch ms, so every replica keeps it exactly as long),
 * then `r` the records or `e` the negative answer. The version in the key changes with the
 * format, so a replica never reads another format's entries.
 */
const KEY_PREFIX = 'hygiene-relay:dns:v1:';

/** Keys a flush asks SCAN for at a time: small enough that no single command holds Redis up. */
const FLUSH_BATCH = 500;

class SharedLevel {
  #store: SharedStore;
  #logger: Logger;
  #warnedGarbage = false;

  constructor(store: SharedStore, logger: Logger) {
    this.#store = store;
    this.#logger = logger;
  }

  /** An entry, or undefined for a miss, an outage, or something that is not ours. */
  async get(key: string, type: CachedType): Promise<Entry | undefined> {
    let text: string | null;
    try {
      text = await this.#store.client.get(KEY_PREFIX + key);
    } catch (err) {
      this.#store.failed(err);
      return undefined;
    }
    this.#store.succeeded();
    if (text === null) return undefined;
    const entry = this.#decode(text, type);
    if (!entry && !this.#warnedGarbage) {
      this.#warnedGarbage = true;
      this.#logger.warn({ key: KEY_PREFIX + key }, 'DNS cache: unreadable entry in Redis ignored (another program writing under our prefix?)');
    }
    return entry;
  }

  #decode(text: string, type: CachedType): Entry | undefined {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      return undefined;
    }
    const parsed = ENTRIES.get(type)!.safeParse(value);
    if (!parsed.success) return undefined;
    return 'r' in parsed.data ? { records: parsed.data.r, expires: parsed.data.x } : { code: parsed.data.e, expires: parsed.data.x };
  }

  /**
   * Drops every entry under our prefix on every master (a Cluster spreads keys over its
   * masters; replicas follow them). SCAN, never KEYS, so Redis serves other clients between
   * batches of at most FLUSH_BATCH keys; UNLINK frees the values in the background.
   */
  async flush(): Promise<number> {
    const client = this.#store.client;
    const nodes = client instanceof Cluster ? client.nodes('master') : [client];
    let dropped = 0;
    for (const node of nodes) {
      let cursor = '0';
      do {
        const [next, keys] = await node.scan(cursor, 'MATCH', `${KEY_PREFIX}*`, 'COUNT', FLUSH_BATCH);
        cursor = next;
        if (keys.length === 0) continue;
        // A Cluster node refuses a multi-key command over several slots (CROSSSLOT): one key each there.
        const counts = client instanceof Cluster ? await Promise.all(keys.map((key) => node.unlink(key))) : [await node.unlink(...keys)];
        dropped += counts.reduce((a, b) => a + b, 0);
      } while (cursor !== '0');
    }
    return dropped;
  }

  set(key: string, entry: Entry, ttl: number): void {
    const value = 'records' in entry ? { x: entry.expires, r: entry.records } : { x: entry.expires, e: entry.code };
    this.#store.client.set(KEY_PREFIX + key, JSON.stringify(value), 'PX', ttl).catch((err: unknown) => this.#store.failed(err));
  }
}

/**
 * The two-level cache of DESIGN §4: in-process LRU, then Redis when configured, then DNS.
 * Errors (SERVFAIL, timeouts) are never cached: the next question goes to DNS again.
 */
export class DnsCache {
  #memory: LRUCache<string, Entry>;
  #shared: SharedLevel | undefined;
  #inflight = new Map<string, Promise<Entry>>();
  #settings: CacheSettings;
  #wire: WireOptions;
  #counts = new Map<string, CacheCount>();

  constructor(settings: CacheSettings, wire: WireOptions, options: { shared?: SharedStore; logger: Logger }) {
    this.#settings = settings;
    this.#wire = wire;
    this.#memory = new LRUCache({ max: settings.maxEntries });
    this.#shared = options.shared && new SharedLevel(options.shared, options.logger);
  }

  /**
   * `fresh`: asked of DNS now, whatever either level holds, and kept as any answer is, so the
   * answer the admin just published serves every later lookup too.
   */
  async resolve(name: string, type: CachedType, fresh = false): Promise<RecordValue[]> {
    let entry: Entry;
    try {
      entry = await this.#entry(name, type, fresh);
    } catch (err) {
      // A fresh error per caller, named as that caller asked, even when the query was shared.
      if (!(err instanceof DnsLookupError)) throw err;
      const fresh = new DnsLookupError(err.code, name, type, err.negativeTtl);
      fresh.server = err.server;
      throw fresh;
    }
    if ('code' in entry) throw answered(entry.code, name, type);
    // Callers may sort what they get (MX lists are sorted in place): their own array, of
    // records frozen when cached, so a hit costs a copy of the list, not of every record.
    return entry.records.slice();
  }

  counts(): CacheCount[] {
    return [...this.#counts.values()].map((count) => ({ ...count }));
  }

  #count(level: CacheLevel, rrtype: string, result: 'hit' | 'miss') {
    lookups.inc({ level, type: rrtype, result });
    const key = `${level}|${rrtype}|${result}`;
    const count = this.#counts.get(key);
    if (count) count.count++;
    else this.#counts.set(key, { level, rrtype, result, count: 1 });
  }

  /** Empties the in-process level, then the shared one; never throws (Redis is an accelerator). */
  async flush(): Promise<FlushCount> {
    const memory = this.#memory.size;
    this.#memory.clear();
    if (!this.#shared) return { memory };
    try {
      return { memory, redis: await this.#shared.flush() };
    } catch (err) {
      return { memory, redisError: err instanceof Error ? err.message : String(err) };
    }
  }

  #entry(name: string, type: CachedType, fresh: boolean): Promise<Entry> {
    // DNS names compare case-insensitively, and "a.example." is "a.example".
    const key = `${type}:${name.toLowerCase().replace(/\.$/, '')}`;
    const cached = fresh ? undefined : this.#memory.get(key);
    if (cached && cached.expires > Date.now()) {
      this.#count('memory', type, 'hit');
      return Promise.resolve(cached);
    }
    if (!fresh) this.#count('memory', type, 'miss');
    // Concurrent misses for one question share one query; a fresh lookup shares only another
    // fresh one, never a miss that may be answered from Redis.
    const slot = fresh ? `fresh|${key}` : key;
    let pending = this.#inflight.get(slot);
    if (!pending) {
      pending = this.#fill(key, name, type, fresh).finally(() => this.#inflight.delete(slot));
      this.#inflight.set(slot, pending);
    }
    return pending;
  }

  async #fill(key: string, name: string, type: CachedType, fresh: boolean): Promise<Entry> {
    if (this.#shared && !fresh) {
      const shared = await this.#shared.get(key, type);
      if (shared && shared.expires > Date.now()) {
        this.#count('redis', type, 'hit');
        // Bounded here too: another replica's clock, or a stray entry, must not pin an answer for long.
        const limit = 'records' in shared ? this.#settings.maxTtl : this.#settings.negativeTtl;
        const ttl = Math.min(shared.expires - Date.now(), limit);
        const entry = 'records' in shared ? { records: frozen(shared.records), expires: Date.now() + ttl } : { ...shared, expires: Date.now() + ttl };
        this.#memory.set(key, entry, { ttl });
        return entry;
      }
      this.#count('redis', type, 'miss');
    }
    const { minTtl, maxTtl, negativeTtl } = this.#settings;
    let entry: Entry;
    let ttl: number;
    try {
      const answer = await lookup(name, type, this.#wire);
      ttl = Math.min(Math.max(answer.ttl * 1000, minTtl), maxTtl);
      entry = { records: frozen(answer.records), expires: Date.now() + ttl };
    } catch (err) {
      if (!(err instanceof DnsLookupError) || (err.code !== 'ENOTFOUND' && err.code !== 'ENODATA')) throw err;
      // RFC 2308 §5: the zone's SOA says how long a negative answer holds (without one, it
      // is not kept at all); negativeTtl caps it.
      ttl = err.negativeTtl === undefined ? 0 : Math.min(Math.max(err.negativeTtl * 1000, minTtl), negativeTtl);
      entry = { code: err.code, expires: Date.now() + ttl };
    }
    if (ttl > 0) {
      this.#memory.set(key, entry, { ttl });
      this.#shared?.set(key, entry, ttl);
    }
    return entry;
  }
}
