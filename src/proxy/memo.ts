import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Config, RedisSettings } from '../config/index.ts';
import type { Logger } from '../observability/index.ts';
import { connectShared, type SharedStore } from '../redis/index.ts';

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
 * is bounced twice. Written before the client hears 250, so a lost connection after the
 * destinations accepted causes no duplicate either.
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
 * Shared by every replica, so a retry that lands on another replica still skips what was
 * delivered. Redis trouble never fails a message: the local memo carries on (a retry on
 * another replica during an outage may then duplicate, which is better than losing mail).
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

  constructor(config: Config['memo'] & { redis: RedisSettings }, logger: Logger) {
    this.#ttl = config.ttl;
    this.#local = new LocalMemo(config);
    this.#shared = connectShared(config.redis, { timeout: 500, what: 'delivery memo', logger: logger.child({ component: 'memo' }) });
  }

  async lookup(keys: MemoKey[]) {
    const local = await this.#local.lookup(keys);
    if (keys.length === 0) return local;
    try {
      const shared = await this.#shared.client.mget(keys.map((key) => RedisMemo.key(key)));
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
      const pipeline = this.#shared.client.pipeline();
      for (const entry of entries) pipeline.set(RedisMemo.key(entry.key), entry.state, 'PX', this.#ttl);
      // exec() resolves even when the commands failed: each result carries its own error.
      const failed = (await pipeline.exec())?.find(([err]) => err)?.[0];
      if (failed) throw failed;
      this.#shared.succeeded();
    } catch (err) {
      this.#shared.failed(err);
    }
  }

  ready() {
    return this.#shared.ready;
  }

  async close() {
    this.#shared.close();
  }
}

export function createMemo(config: Config['memo'], logger: Logger): DeliveryMemo {
  return config.redis ? new RedisMemo({ ...config, redis: config.redis }, logger) : new LocalMemo(config);
}
