import { createHash } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import path from 'node:path';
import type { DatabaseSync, StatementSync } from 'node:sqlite';
import { Cluster, type Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';
import { ConfigError, type Config, type RedisSettings } from '../config/index.ts';
import type { Logger } from '../observability/index.ts';
import { connectShared, type SharedStore } from '../redis/index.ts';

/** Where the memo lives without Redis unless `memo.path` says otherwise: state, in the FHS sense (FHS 3.0 §5.8). */
export const DEFAULT_MEMO_PATH = '/var/lib/hygiene-relay/memo.sqlite';

/** What the relay already did for one recipient of one message. */
export type MemoState = 'delivered' | 'bounced';

export interface MemoKey {
  /** SHA-256 of the message exactly as the client sent it. */
  message: string;
  sender: string;
  recipient: string;
}

/**
 * The delivery memo (DESIGN §1): when a client retries a message that some destinations
 * already have, the relay delivers only to the rest, so nobody gets a duplicate and nobody
 * is bounced twice. Written before the client hears 250 (or 451), so a lost connection after
 * the destinations accepted causes no duplicate either.
 */
export interface DeliveryMemo {
  lookup(keys: MemoKey[]): Promise<(MemoState | undefined)[]>;
  record(entries: { key: MemoKey; state: MemoState }[]): Promise<void>;
  /** Settles once a shared memo connected or failed to; start-up waits for it. */
  ready(): Promise<void>;
  close(): Promise<void>;
}

/** RFC 5321 §2.4: the local part is case-sensitive, the domain is not. */
function normalizeAddress(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? address : address.slice(0, at) + address.slice(at).toLowerCase();
}

function digest(key: MemoKey): string {
  return createHash('sha256')
    .update(`${key.message}\0${normalizeAddress(key.sender)}\0${normalizeAddress(key.recipient)}`)
    .digest('base64url');
}

class LocalMemo implements DeliveryMemo {
  #entries: LRUCache<string, MemoState>;

  constructor(config: Config['memo']) {
    this.#entries = new LRUCache({ max: config.maxEntries, ttl: config.ttl });
  }

  async lookup(keys: MemoKey[]) {
    return keys.map((key) => this.#entries.get(digest(key)));
  }

  async record(entries: { key: MemoKey; state: MemoState }[]) {
    for (const entry of entries) this.#entries.set(digest(entry.key), entry.state);
  }

  async ready() {}

  async close() {}
}

/**
 * The memo on disk (node:sqlite), used without Redis: a restart keeps it, and every relay
 * process of the host that opens the same file shares it. WAL lets readers and the one
 * writer proceed together, and `busy_timeout` makes a writer wait for another process's
 * short write instead of failing (https://sqlite.org/wal.html, https://sqlite.org/pragma.html#pragma_busy_timeout).
 * The default path may be missing (a relay run from a checkout): then the relay says so
 * once and keeps the memo in memory; a `memo.path` the admin chose must work, or the relay
 * does not start.
 */
class StoreMemo implements DeliveryMemo {
  #config: Config['memo'];
  #logger: Logger;
  #db?: DatabaseSync;
  #statements?: { get: StatementSync; put: StatementSync; bound: StatementSync; expire: StatementSync };
  #fallback?: LocalMemo;

  constructor(config: Config['memo'], logger: Logger) {
    this.#config = config;
    this.#logger = logger;
  }

  /** Opens the store (inside start-up's error handling: a failure here stops what already started). */
  async ready() {
    const file = this.#config.path ?? DEFAULT_MEMO_PATH;
    try {
      this.#open(file);
    } catch (err) {
      const reason = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      if (this.#config.path) throw new ConfigError(`memo.path: cannot open ${file} (${reason})`);
      this.#logger.warn(
        { path: file, error: reason },
        `delivery memo: cannot open ${file}, keeping it in process memory: after a restart, a retry of a message that reached only some recipients reaches them again. Create ${path.dirname(file)} writable by the relay, or set memo.path`,
      );
      this.#fallback = new LocalMemo(this.#config);
    }
  }

  #open(file: string) {
    // 0600 before SQLite creates the file with its own default mode; the -wal and -shm files
    // take the database file's mode (https://sqlite.org/tempfiles.html).
    closeSync(openSync(file, 'a', 0o600));
    // Loaded here rather than imported: Node 22 (within `engines`) prints an ExperimentalWarning
    // on stderr when node:sqlite loads, and commands that never open the memo need not show
    // it. The bundled Node 24 prints nothing: node:sqlite is a release candidate since 24.15.
    const { DatabaseSync: Database } = process.getBuiltinModule('node:sqlite');
    const db = new Database(file);
    try {
      // First: switching to WAL needs a lock that another relay opening the file may hold.
      db.exec('PRAGMA busy_timeout = 2000');
      db.exec('PRAGMA journal_mode = WAL');
      // In WAL mode a commit survives the process being killed; only a power cut can take the
      // last ones back, and a lost entry costs a duplicate, not a message.
      db.exec('PRAGMA synchronous = NORMAL');
      // v1: the table's shape; a later change takes a new name, so an old file is never misread.
      db.exec('CREATE TABLE IF NOT EXISTS memo_v1 (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, state TEXT NOT NULL, expires INTEGER NOT NULL)');
      db.exec('CREATE INDEX IF NOT EXISTS memo_v1_expires ON memo_v1 (expires)');
      this.#statements = {
        get: db.prepare('SELECT state FROM memo_v1 WHERE key = ? AND expires > ?'),
        // REPLACE deletes the old row and inserts a new one: a key written again gets the newest id.
        put: db.prepare('INSERT OR REPLACE INTO memo_v1 (key, state, expires) VALUES (?, ?, ?)'),
        // `maxEntries`: ids grow with every write, so the newest maxEntries rows are those kept.
        bound: db.prepare('DELETE FROM memo_v1 WHERE id <= (SELECT max(id) FROM memo_v1) - ?'),
        expire: db.prepare('DELETE FROM memo_v1 WHERE expires <= ?'),
      };
    } catch (err) {
      db.close();
      throw err;
    }
    this.#db = db;
  }

  /** A failed read fails the delivery (a temporary reply): sending blind could duplicate. */
  async lookup(keys: MemoKey[]) {
    if (this.#fallback) return this.#fallback.lookup(keys);
    const now = Date.now();
    return keys.map((key) => {
      const row = this.#statements!.get.get(digest(key), now) as { state: string } | undefined;
      return row?.state === 'delivered' || row?.state === 'bounced' ? row.state : undefined;
    });
  }

  /**
   * Committed when this returns, before the client's reply. A failed write is logged and
   * the reply stands: the destinations' answers are what the client must hear, and a memo
   * that could not be written costs at most a duplicate on a retry.
   */
  async record(entries: { key: MemoKey; state: MemoState }[]) {
    if (this.#fallback) return this.#fallback.record(entries);
    if (entries.length === 0) return;
    const db = this.#db!;
    const statements = this.#statements!;
    const now = Date.now();
    try {
      // IMMEDIATE: the write lock first, so two processes never both read then upgrade (SQLITE_BUSY without waiting).
      db.exec('BEGIN IMMEDIATE');
      try {
        for (const { key, state } of entries) statements.put.run(digest(key), state, now + this.#config.ttl);
        statements.expire.run(now);
        statements.bound.run(this.#config.maxEntries);
        db.exec('COMMIT');
      } catch (err) {
        if (db.isTransaction) db.exec('ROLLBACK');
        throw err;
      }
    } catch (err) {
      this.#logger.error({ err, entries: entries.length }, 'delivery memo: could not record who has the message; a retry of it may reach them again');
    }
  }

  async close() {
    this.#db?.close();
    this.#db = undefined;
  }
}

/**
 * How long into a Redis outage the memo waits for it to come back before carrying on
 * without it. A Redis restarted by its supervisor or a Sentinel failover is back within
 * this, and a replica that went on alone in that moment would miss what another one
 * recorded (the soak, test/soak.test.ts, found that duplicate); past it, the outage is real
 * and mail flows at once on the local memo. ioredis tries again after 50, 100, 150… ms, so a
 * server back within about 1.5 s is reconnected within this.
 */
const RECONNECT_GRACE_MS = 2000;

/**
 * Shared by every replica, so a retry that lands on another replica still skips what was
 * delivered. Redis trouble never fails a message: the local memo carries on (a retry on
 * another replica during an outage longer than RECONNECT_GRACE_MS may then duplicate, which
 * is better than losing mail).
 */
class RedisMemo implements DeliveryMemo {
  static readonly prefix = 'hygiene-relay:memo:v2:';

  /** The message's hash as a hash tag: one message's keys share a Cluster slot, so MGET and the pipeline work there. */
  static key(key: MemoKey): string {
    return `${RedisMemo.prefix}{${key.message}}:${digest(key)}`;
  }
  #shared: SharedStore;
  #local: LocalMemo;
  #ttl: number;
  #logger: Logger;
  /** When the connection was lost, while it is. */
  #awaySince?: number;

  constructor(config: Config['memo'] & { redis: RedisSettings }, logger: Logger) {
    this.#ttl = config.ttl;
    this.#local = new LocalMemo(config);
    this.#logger = logger;
    this.#shared = connectShared(config.redis, { timeout: 500, what: 'delivery memo', logger });
    this.#shared.client.on('close', () => (this.#awaySince ??= Date.now()));
    this.#shared.client.on('ready', () => (this.#awaySince = undefined));
  }

  /**
   * Connected: ioredis says `ready` until it has heard the socket close, so a server just
   * killed shows first as a socket that cannot be written (a Cluster's nodes cannot be told).
   */
  #up(): boolean {
    const client = this.#shared.client;
    return client.status === 'ready' && (client instanceof Cluster || client.stream.writable);
  }

  /** Connected, or it came back within the grace of the outage (true); false once that is over. */
  async #reconnected(): Promise<boolean> {
    const client = this.#shared.client;
    if (this.#up()) return true;
    // No 'close' heard yet (a command failed on a socket just cut): the outage begins now.
    const left = (this.#awaySince ?? Date.now()) + RECONNECT_GRACE_MS - Date.now();
    if (left <= 0) return false;
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        client.off('ready', done);
        resolve();
      };
      const timer = setTimeout(done, left);
      client.once('ready', done);
    });
    return this.#up();
  }

  /**
   * A command (idempotent: MGET, SET) on the shared memo; one cut by the restart itself, its
   * connection lost in the middle, is sent once more on the new connection.
   */
  async #command<T>(command: () => Promise<T>): Promise<T> {
    await this.#reconnected();
    try {
      return await command();
    } catch (err) {
      if (this.#up() || !(await this.#reconnected())) throw err;
      return command();
    }
  }

  async lookup(keys: MemoKey[]) {
    const local = await this.#local.lookup(keys);
    if (keys.length === 0) return local;
    try {
      const shared = await this.#command(() => this.#shared.client.mget(keys.map((key) => RedisMemo.key(key))));
      this.#shared.succeeded();
      return shared.map((value, i) => (value === 'delivered' || value === 'bounced' ? value : local[i]));
    } catch (err) {
      this.#shared.failed(err);
      return local;
    }
  }

  async record(entries: { key: MemoKey; state: MemoState }[]) {
    await this.#local.record(entries);
    if (entries.length === 0) return;
    try {
      await this.#command(async () => {
        const pipeline = this.#shared.client.pipeline();
        for (const entry of entries) pipeline.set(RedisMemo.key(entry.key), entry.state, 'PX', this.#ttl);
        // exec() resolves even when the commands failed: each result carries its own error.
        const failed = (await pipeline.exec())?.find(([err]) => err)?.[0];
        if (failed) throw failed;
      });
      this.#shared.succeeded();
    } catch (err) {
      this.#shared.failed(err);
    }
  }

  async ready() {
    await this.#shared.ready;
    const client = this.#shared.client;
    // Not connected yet: checked once it is, so the warning is not lost to a slow start.
    if (client.status === 'ready') await this.#checkPersistence();
    else client.once('ready', () => void this.#checkPersistence());
  }

  /**
   * A Redis that keeps nothing across its own restart empties the memo with it: retries of
   * messages that reached only some recipients then reach the others again. One warning at
   * start names the servers that do not persist (AOF or RDB snapshots, https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/).
   */
  async #checkPersistence() {
    const client = this.#shared.client;
    const nodes = client instanceof Cluster ? client.nodes('master') : [client];
    const found = await Promise.all(nodes.map(async (node) => ({ server: `${node.options.host}:${node.options.port}`, ...(await persistence(node)) })));
    const missing = found.filter((f) => f.persists !== true);
    if (missing.length === 0) return;
    this.#logger.warn(
      { servers: missing.map(({ server, how }) => ({ server, persistence: how })) },
      'delivery memo: Redis may not keep the memo across its restart (no AOF, no RDB snapshots, or the relay cannot tell): after one, a retry of a message that reached only some recipients reaches them again. Turn on appendonly (or save) there',
    );
  }

  async close() {
    this.#shared.close();
  }
}

/**
 * Whether one Redis server keeps its data across a restart. CONFIG GET tells AOF and the
 * RDB schedule; where CONFIG is renamed or refused (managed services), INFO persistence
 * still tells AOF, but not whether snapshots are scheduled: `persists` is then unknown.
 */
async function persistence(node: Redis): Promise<{ persists: boolean | 'unknown'; how: string }> {
  try {
    const [, appendonly] = (await node.config('GET', 'appendonly')) as string[];
    const [, save] = (await node.config('GET', 'save')) as string[];
    if (appendonly === 'yes') return { persists: true, how: 'appendonly yes' };
    return save ? { persists: true, how: `save "${save}"` } : { persists: false, how: 'appendonly no, save ""' };
  } catch {
    try {
      const aof = /^aof_enabled:(\d)/m.exec(await node.info('persistence'))?.[1];
      return aof === '1' ? { persists: true, how: 'aof_enabled:1' } : { persists: 'unknown', how: 'CONFIG not allowed; INFO persistence says aof_enabled:0, RDB schedule unknown' };
    } catch (err) {
      return { persists: 'unknown', how: `cannot ask: ${(err as Error).message}` };
    }
  }
}

export function createMemo(config: Config['memo'], logger: Logger): DeliveryMemo {
  const memoLogger = logger.child({ component: 'memo' });
  return config.redis ? new RedisMemo({ ...config, redis: config.redis }, memoLogger) : new StoreMemo(config, memoLogger);
}
