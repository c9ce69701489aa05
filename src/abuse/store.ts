import { closeSync, openSync } from 'node:fs';
import type { DatabaseSync, StatementSync } from 'node:sqlite';
import { LRUCache } from 'lru-cache';
import { ConfigError, type Config } from '../config/index.ts';
import type { Logger } from '../observability/index.ts';
import type { SharedStore } from '../redis/index.ts';

/** What a limit, a hold or a history is kept for: an AUTH user, a client address, an envelope sender. */
export type Kind = 'user' | 'address' | 'sender';
const KINDS: readonly Kind[] = ['user', 'address', 'sender'];

/** A sender the guard refuses until an admin releases it (`hygiene-relay abuse release`). */
export interface Hold {
  kind: Kind;
  who: string;
  /** When the hold began, ms since the epoch. */
  since: number;
  /** Why, in the words of the abuse record that began it. */
  why: string;
}

/** What one sender sent within the last hour (the last BUCKETS_PER_HOUR buckets). */
export interface LastHour {
  recipients: number;
  domains: number;
}

/** Its hourly history before that hour: one entry per hour in which it sent anything. */
export interface Baseline {
  recipients: number[];
  domains: number[];
}

/**
 * Holds, what each sender sent hour by hour (the anomaly rule's baseline) and which
 * providers refused it as spam: in Redis with `limits.redis`, so every replica sees the same;
 * otherwise in the relay's SQLite state file (memo.path), which its workers and a restart share.
 */
export interface AbuseStore {
  ready: Promise<void>;
  /** The first of `keys` that is held. */
  heldOf(keys: readonly (readonly [Kind, string])[]): Promise<Hold | undefined>;
  /** False when it was held already (another replica got there first). */
  hold(hold: Hold): Promise<boolean>;
  /** Releases the holds on `who` of `kinds` (any kind by default); resolves to those released. */
  release(who: string, kinds?: readonly Kind[]): Promise<Hold[]>;
  holds(): Promise<Hold[]>;
  /** Adds one recipient (in `domain`) to `principal`'s history at `now`; resolves to its last hour. */
  sent(principal: string, domain: string, now: number): Promise<LastHour>;
  /** The hours before the last one, up to BASELINE_HOURS back. */
  baseline(principal: string, now: number): Promise<Baseline>;
  /** Notes a refusal as spam by `provider` at `now`; resolves to every provider that refused it within the last hour. */
  refusedAsSpam(principal: string, provider: string, now: number): Promise<string[]>;
  close(): void;
}

// Ten-minute buckets: "the last hour" slides by ten minutes, and a week of history is a
// thousand small counters per sender at most.
export const BUCKET_MS = 10 * 60_000;
export const BUCKETS_PER_HOUR = 6;
/** How far back the baseline looks: a week, so a weekday's peak is compared with weekdays. */
export const BASELINE_HOURS = 7 * 24;
const HOUR_MS = 3_600_000;
const KEPT_MS = (BASELINE_HOURS + 2) * HOUR_MS;

const bucketOf = (now: number) => Math.floor(now / BUCKET_MS);
/** The hours the baseline covers: whole hours that end before the last hour's first bucket. */
function baselineHours(now: number): { first: number; end: number } {
  const end = Math.floor((bucketOf(now) - BUCKETS_PER_HOUR + 1) / BUCKETS_PER_HOUR);
  return { first: end - BASELINE_HOURS, end };
}

/**
 * The SQLite store: `file`, or an in-memory database where the state file cannot be had
 * (then each process keeps its own, as it keeps its own counts). WAL and busy_timeout as in
 * the delivery memo (proxy/memo.ts): several processes of one host write the same file.
 */
export class FileAbuseStore implements AbuseStore {
  ready = Promise.resolve();
  #db: DatabaseSync;
  #q: Record<'held' | 'hold' | 'release' | 'holds' | 'add' | 'addDomain' | 'lastHour' | 'lastHourDomains' | 'hours' | 'hourDomains' | 'spam' | 'spammers' | 'prune' | 'pruneDomains' | 'pruneSpam', StatementSync>;
  #pruned = 0;

  constructor(file: string) {
    if (file !== ':memory:') closeSync(openSync(file, 'a', 0o600));
    const { DatabaseSync: Database } = process.getBuiltinModule('node:sqlite');
    const db = new Database(file);
    try {
      db.exec('PRAGMA busy_timeout = 2000');
      db.exec('PRAGMA journal_mode = WAL');
      db.exec('PRAGMA synchronous = NORMAL');
      // v1: the tables' shape, as the memo's. The indexes on bucket and at serve pruning, which
      // reads across senders: without them it would scan a week of history.
      db.exec(`CREATE TABLE IF NOT EXISTS abuse_held_v1 (kind TEXT NOT NULL, who TEXT NOT NULL, since INTEGER NOT NULL, why TEXT NOT NULL, PRIMARY KEY (kind, who));
        CREATE TABLE IF NOT EXISTS abuse_sent_v1 (principal TEXT NOT NULL, bucket INTEGER NOT NULL, recipients INTEGER NOT NULL, PRIMARY KEY (principal, bucket));
        CREATE TABLE IF NOT EXISTS abuse_domains_v1 (principal TEXT NOT NULL, bucket INTEGER NOT NULL, domain TEXT NOT NULL, PRIMARY KEY (principal, bucket, domain));
        CREATE TABLE IF NOT EXISTS abuse_spam_v1 (principal TEXT NOT NULL, provider TEXT NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (principal, provider));
        CREATE INDEX IF NOT EXISTS abuse_sent_v1_bucket ON abuse_sent_v1 (bucket);
        CREATE INDEX IF NOT EXISTS abuse_domains_v1_bucket ON abuse_domains_v1 (bucket);
        CREATE INDEX IF NOT EXISTS abuse_spam_v1_at ON abuse_spam_v1 (at);`);
      const hour = `bucket / ${BUCKETS_PER_HOUR}`;
      this.#q = {
        held: db.prepare('SELECT kind, who, since, why FROM abuse_held_v1 WHERE kind = ? AND who = ?'),
        hold: db.prepare('INSERT OR IGNORE INTO abuse_held_v1 (kind, who, since, why) VALUES (?, ?, ?, ?)'),
        // One statement: workers releasing at once must not both read the row before either deletes it.
        release: db.prepare('DELETE FROM abuse_held_v1 WHERE who = ? AND kind = ? RETURNING kind, who, since, why'),
        holds: db.prepare('SELECT kind, who, since, why FROM abuse_held_v1 ORDER BY since'),
        add: db.prepare('INSERT INTO abuse_sent_v1 (principal, bucket, recipients) VALUES (?, ?, 1) ON CONFLICT DO UPDATE SET recipients = recipients + 1'),
        addDomain: db.prepare('INSERT OR IGNORE INTO abuse_domains_v1 (principal, bucket, domain) VALUES (?, ?, ?)'),
        // The last hour's buckets only, as Redis reads them: not those of a clock ahead of this one (another worker, a step back).
        lastHour: db.prepare('SELECT coalesce(sum(recipients), 0) AS n FROM abuse_sent_v1 WHERE principal = ? AND bucket > ? AND bucket <= ?'),
        lastHourDomains: db.prepare('SELECT count(DISTINCT domain) AS n FROM abuse_domains_v1 WHERE principal = ? AND bucket > ? AND bucket <= ?'),
        // A bucket range, so the primary key (principal, bucket) finds the rows.
        hours: db.prepare(`SELECT sum(recipients) AS n FROM abuse_sent_v1 WHERE principal = ? AND bucket >= ? AND bucket < ? GROUP BY ${hour}`),
        hourDomains: db.prepare(`SELECT count(DISTINCT domain) AS n FROM abuse_domains_v1 WHERE principal = ? AND bucket >= ? AND bucket < ? GROUP BY ${hour}`),
        spam: db.prepare('INSERT INTO abuse_spam_v1 (principal, provider, at) VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET at = excluded.at'),
        spammers: db.prepare('SELECT provider FROM abuse_spam_v1 WHERE principal = ? AND at > ? ORDER BY provider'),
        prune: db.prepare('DELETE FROM abuse_sent_v1 WHERE bucket < ?'),
        pruneDomains: db.prepare('DELETE FROM abuse_domains_v1 WHERE bucket < ?'),
        pruneSpam: db.prepare('DELETE FROM abuse_spam_v1 WHERE at < ?'),
      };
    } catch (err) {
      db.close();
      throw err;
    }
    this.#db = db;
  }

  async heldOf(keys: readonly (readonly [Kind, string])[]) {
    for (const [kind, who] of keys) {
      const row = this.#q.held.get(kind, who) as Hold | undefined;
      if (row) return { ...row };
    }
    return undefined;
  }

  async hold(hold: Hold) {
    return this.#q.hold.run(hold.kind, hold.who, hold.since, hold.why).changes === 1;
  }

  async release(who: string, kinds: readonly Kind[] = KINDS) {
    return kinds.flatMap((kind) => (this.#q.release.all(who, kind) as unknown as Hold[]).map((row) => ({ ...row })));
  }

  async holds() {
    return (this.#q.holds.all() as unknown as Hold[]).map((row) => ({ ...row }));
  }

  async sent(principal: string, domain: string, now: number) {
    const bucket = bucketOf(now);
    // One write transaction for both: the write lock is taken once (IMMEDIATE, as the memo does).
    this.#db.exec('BEGIN IMMEDIATE');
    try {
      this.#q.add.run(principal, bucket);
      this.#q.addDomain.run(principal, bucket, domain);
      this.#db.exec('COMMIT');
    } catch (err) {
      if (this.#db.isTransaction) this.#db.exec('ROLLBACK');
      throw err;
    }
    this.#prune(now);
    const since = bucket - BUCKETS_PER_HOUR;
    return {
      recipients: Number((this.#q.lastHour.get(principal, since, bucket) as { n: number }).n),
      domains: Number((this.#q.lastHourDomains.get(principal, since, bucket) as { n: number }).n),
    };
  }

  async baseline(principal: string, now: number) {
    const { first, end } = baselineHours(now);
    const column = (statement: StatementSync) => (statement.all(principal, first * BUCKETS_PER_HOUR, end * BUCKETS_PER_HOUR) as { n: number }[]).map((row) => Number(row.n));
    return { recipients: column(this.#q.hours), domains: column(this.#q.hourDomains) };
  }

  async refusedAsSpam(principal: string, provider: string, now: number) {
    this.#q.spam.run(principal, provider, now);
    return (this.#q.spammers.all(principal, now - HOUR_MS) as { provider: string }[]).map((row) => row.provider);
  }

  /** History older than the baseline goes, at most once a minute. */
  #prune(now: number) {
    if (now - this.#pruned < 60_000) return;
    this.#pruned = now;
    const bucket = bucketOf(now - KEPT_MS);
    this.#q.prune.run(bucket);
    this.#q.pruneDomains.run(bucket);
    this.#q.pruneSpam.run(now - HOUR_MS);
  }

  close() {
    if (this.#db.isOpen) this.#db.close();
  }
}

/**
 * The Redis store. Each sender's keys carry it as a hash tag, so the multi-key reads work on
 * a Cluster; ten-minute counters (INCR) and distinct domains (HyperLogLog, whose PFCOUNT over
 * several keys counts their union: https://redis.io/docs/latest/commands/pfcount/) expire
 * with the baseline. While Redis is away the in-memory store carries on, as the limits' own
 * insurance does: the holds Redis last told of still hold, one placed then is this process's
 * until Redis is back, and list and release answer an error rather than half the truth.
 */
export class RedisAbuseStore implements AbuseStore {
  static readonly prefix = 'hygiene-relay:abuse:v1:';
  #shared: SharedStore;
  #local = new FileAbuseStore(':memory:');
  #held = `${RedisAbuseStore.prefix}held`;
  /** Holds as Redis last answered for them, by field (kind:who). */
  #seen = new LRUCache<string, Hold>({ max: 10_000 });

  constructor(shared: SharedStore) {
    this.#shared = shared;
    shared.client.on('ready', () => void this.#sync());
  }

  get ready() {
    return this.#shared.ready;
  }

  async #redis<T>(command: () => Promise<T>, otherwise: () => Promise<T>): Promise<T> {
    try {
      const result = await command();
      this.#shared.succeeded();
      return result;
    } catch (err) {
      this.#shared.failed(err);
      return otherwise();
    }
  }

  #key(principal: string, what: string) {
    return `${RedisAbuseStore.prefix}{${principal}}:${what}`;
  }

  /**
   * Redis's answer, remembered for an outage: a sender held there stays held here while Redis
   * is away. A hold placed during the outage is this process's until Redis is back (#sync).
   */
  heldOf(keys: readonly (readonly [Kind, string])[]) {
    const fields = keys.map(([kind, who]) => `${kind}:${who}`);
    return this.#redis(
      async () => {
        const rows = fields.length ? await this.#shared.client.hmget(this.#held, ...fields) : [];
        rows.forEach((row, i) => (row === null ? this.#seen.delete(fields[i]) : this.#seen.set(fields[i], JSON.parse(row) as Hold)));
        const found = fields.find((field) => this.#seen.has(field));
        return found ? this.#seen.get(found) : this.#local.heldOf(keys);
      },
      async () => {
        const found = fields.find((field) => this.#seen.has(field));
        return found ? this.#seen.get(found) : this.#local.heldOf(keys);
      },
    );
  }

  hold(hold: Hold) {
    const field = `${hold.kind}:${hold.who}`;
    return this.#redis(
      async () => {
        const placed = (await this.#shared.client.hsetnx(this.#held, field, JSON.stringify(hold))) === 1;
        // Remembered as Redis has it, for an outage before this sender's next recipient here.
        if (placed) this.#seen.set(field, hold);
        return placed;
      },
      () => this.#local.hold(hold),
    );
  }

  /** Holds placed while Redis was away go to Redis once it is back, where every replica sees them. */
  async #sync() {
    try {
      for (const hold of await this.#local.holds()) {
        const field = `${hold.kind}:${hold.who}`;
        await this.#shared.client.hsetnx(this.#held, field, JSON.stringify(hold));
        // Whichever hold Redis kept (another replica's, placed first, or this one), remembered before the local copy goes.
        const kept = await this.#shared.client.hget(this.#held, field);
        if (kept) this.#seen.set(field, JSON.parse(kept) as Hold);
        await this.#local.release(hold.who, [hold.kind]);
      }
    } catch (err) {
      this.#shared.failed(err);
    }
  }

  /** What an admin asks (list, release) needs Redis: an answer from this replica alone would be wrong for the others. */
  #unavailable(): never {
    throw new Error('Redis (limits.redis) does not answer, and it holds every replica\'s holds: try again once it is back');
  }

  async release(who: string, kinds: readonly Kind[] = KINDS) {
    return this.#redis(
      async () => {
        const fields = kinds.map((kind) => `${kind}:${who}`);
        // MULTI: workers releasing at once must not both read the holds before either deletes them.
        const results = await this.#shared.client.multi().hmget(this.#held, ...fields).hdel(this.#held, ...fields).exec();
        if (!results) throw new Error('transaction discarded');
        for (const [err] of results) if (err) throw err;
        for (const field of fields) this.#seen.delete(field);
        const rows = results[0][1] as (string | null)[];
        return [...rows.flatMap((row) => (row ? [JSON.parse(row) as Hold] : [])), ...(await this.#local.release(who, kinds))];
      },
      () => this.#unavailable(),
    );
  }

  holds() {
    return this.#redis(
      async () => [...Object.values(await this.#shared.client.hgetall(this.#held)).map((row) => JSON.parse(row) as Hold), ...(await this.#local.holds())].sort((a, b) => a.since - b.since),
      () => this.#unavailable(),
    );
  }

  sent(principal: string, domain: string, now: number) {
    return this.#redis(
      async () => {
        const bucket = bucketOf(now);
        const last = Array.from({ length: BUCKETS_PER_HOUR }, (_, i) => bucket - i);
        const ttl = Math.ceil(KEPT_MS / 1000);
        const results = await this.#shared.client
          .multi()
          .incr(this.#key(principal, `n:${bucket}`))
          .expire(this.#key(principal, `n:${bucket}`), ttl)
          .pfadd(this.#key(principal, `d:${bucket}`), domain)
          .expire(this.#key(principal, `d:${bucket}`), ttl)
          .mget(...last.map((b) => this.#key(principal, `n:${b}`)))
          .pfcount(...last.map((b) => this.#key(principal, `d:${b}`)))
          .exec();
        if (!results) throw new Error('transaction discarded');
        for (const [err] of results) if (err) throw err;
        const counts = results[4][1] as (string | null)[];
        return { recipients: counts.reduce((sum, n) => sum + Number(n ?? 0), 0), domains: Number(results[5][1]) };
      },
      () => this.#local.sent(principal, domain, now),
    );
  }

  baseline(principal: string, now: number) {
    return this.#redis(
      async () => {
        const { first, end } = baselineHours(now);
        const hours = Array.from({ length: end - first }, (_, i) => first + i);
        const buckets = (hour: number) => Array.from({ length: BUCKETS_PER_HOUR }, (_, i) => hour * BUCKETS_PER_HOUR + i);
        const pipeline = this.#shared.client.pipeline();
        pipeline.mget(...hours.flatMap((hour) => buckets(hour).map((b) => this.#key(principal, `n:${b}`))));
        for (const hour of hours) pipeline.pfcount(...buckets(hour).map((b) => this.#key(principal, `d:${b}`)));
        const results = (await pipeline.exec()) ?? [];
        for (const [err] of results) if (err) throw err;
        const counts = (results[0][1] as (string | null)[]).map((n) => Number(n ?? 0));
        const recipients = hours.map((_, i) => counts.slice(i * BUCKETS_PER_HOUR, (i + 1) * BUCKETS_PER_HOUR).reduce((sum, n) => sum + n, 0));
        const domains = results.slice(1).map(([, n]) => Number(n));
        return { recipients: recipients.filter((n) => n > 0), domains: domains.filter((n) => n > 0) };
      },
      () => this.#local.baseline(principal, now),
    );
  }

  refusedAsSpam(principal: string, provider: string, now: number) {
    return this.#redis(
      async () => {
        const key = this.#key(principal, 'spam');
        const results = await this.#shared.client
          .multi()
          .zadd(key, now, provider)
          .zremrangebyscore(key, '-inf', now - HOUR_MS)
          .zrange(key, '0', '-1')
          .pexpire(key, HOUR_MS)
          .exec();
        if (!results) throw new Error('transaction discarded');
        for (const [err] of results) if (err) throw err;
        return (results[2][1] as string[]).sort();
      },
      () => this.#local.refusedAsSpam(principal, provider, now),
    );
  }

  close() {
    this.#local.close();
  }
}

/**
 * The store for this configuration: Redis through the limits' connection when there is one;
 * else the state file beside the delivery memo (memo.path), or in memory, with one warning,
 * when only the default path was tried and cannot be opened.
 */
export function openAbuseStore(config: Config, shared: SharedStore | undefined, defaultPath: string, logger: Logger): AbuseStore {
  if (shared) return new RedisAbuseStore(shared);
  const file = config.memo.path ?? defaultPath;
  try {
    return new FileAbuseStore(file);
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    if (config.memo.path) throw new ConfigError(`memo.path: cannot open ${file} for the abuse guard's holds (${reason})`);
    logger.warn({ path: file, error: reason }, `abuse guard: cannot open ${file}, keeping holds and sending history in process memory: a restart releases every hold. Create the directory writable by the relay, set memo.path, or limits.redis`);
    return new FileAbuseStore(':memory:');
  }
}

