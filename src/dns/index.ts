import { promises as dns, type MxRecord } from 'node:dns';
import net from 'node:net';
import type { Config } from '../config/index.ts';
import type { Logger } from '../observability/index.ts';
import { connectShared, type SharedStore } from '../redis/index.ts';
import { DnsCache, type CacheCount, type FlushCount } from './cache.ts';
import { CACHED_TYPES, lookup, type CachedType, type WireOptions } from './wire.ts';

export type { CacheCount, FlushCount } from './cache.ts';

/**
 * The relay's one resolver, in the `dns.promises.resolve(name, rrtype)` shape mailauth takes as
 * its `resolver`, so its SPF/DKIM/DMARC lookups and the relay's own go the same way.
 * Errors keep node's codes (ENOTFOUND, ENODATA, ESERVFAIL, ETIMEOUT…): callers decide
 * temporary versus permanent from them.
 */
export interface Resolve {
  (name: string, rrtype: 'A' | 'AAAA' | 'CNAME' | 'NS' | 'PTR'): Promise<string[]>;
  (name: string, rrtype: 'MX'): Promise<MxRecord[]>;
  (name: string, rrtype: 'TXT'): Promise<string[][]>;
  (name: string, rrtype: string): Promise<unknown>;
}

export interface Resolver {
  resolve: Resolve;
  /**
   * Asks DNS now, reading neither cache level, and keeps the answer in both as `resolve`
   * does: what a permanent refusal rests on, so a record just fixed is seen at once and then
   * serves every lookup.
   */
  fresh: Resolve;
  /** Drops every cached answer (in-process, and under our prefix in Redis) and logs what it dropped. */
  flush(): Promise<FlushCount>;
  /** Settles when the shared level has connected, or failed to: lookups before it skip Redis. */
  ready(): Promise<void>;
  /** Hits and misses per cache level and record type. */
  counts(): CacheCount[];
  close(): void;
}

type ServerSettings = Pick<Config['dns'], 'servers' | 'timeout' | 'tries'>;

function wireOptions(config: ServerSettings): WireOptions {
  return { servers: config.servers, timeout: config.timeout, tries: config.tries };
}

function isCached(rrtype: string): rrtype is CachedType {
  return (CACHED_TYPES as readonly string[]).includes(rrtype);
}

/** Record types nobody here asks for (SRV, CAA…) go to node's resolver, uncached, same servers. */
function otherTypes(config: ServerSettings): (name: string, rrtype: string) => Promise<unknown> {
  const resolver = new dns.Resolver({ timeout: config.timeout, tries: config.tries });
  resolver.setServers(config.servers.map(({ host, port }) => (net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`)));
  return (name, rrtype) => resolver.resolve(name, rrtype);
}

/** The resolver the relay runs with: cached in-process, and in Redis when `dns.cache.redis` is set. */
export function createResolver(config: Config['dns'], logger: Logger): Resolver {
  const log = logger.child({ component: 'dns' });
  const shared: SharedStore | undefined = config.cache.redis
    ? connectShared(config.cache.redis, { timeout: config.cache.redisTimeout, what: 'DNS cache', logger: log })
    : undefined;
  const cache = new DnsCache(config.cache, wireOptions(config), { shared, logger: log });
  const other = otherTypes(config);
  const resolve = ((name: string, rrtype: string) => (isCached(rrtype) ? cache.resolve(name, rrtype) : other(name, rrtype))) as Resolve;
  const fresh = ((name: string, rrtype: string) => (isCached(rrtype) ? cache.resolve(name, rrtype, true) : other(name, rrtype))) as Resolve;
  const flush = async () => {
    const dropped = await cache.flush();
    if (dropped.redisError) log.warn(dropped, 'DNS cache flushed in-process; Redis did not answer, its entries expire by their TTL');
    else log.info(dropped, 'DNS cache flushed');
    return dropped;
  };
  return { resolve, fresh, flush, ready: async () => shared?.ready, counts: () => cache.counts(), close: () => shared?.close() };
}

/** Straight to DNS, nothing kept: for one-off checks that must see what is published now. */
export function uncachedResolver(config: ServerSettings): Resolve {
  const wire = wireOptions(config);
  const other = otherTypes(config);
  return (async (name: string, rrtype: string) => (isCached(rrtype) ? (await lookup(name, rrtype, wire)).records : other(name, rrtype))) as Resolve;
}

/** DNS error codes that mean "try again later", never "does not exist". */
export function isTemporaryDnsError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code !== 'ENOTFOUND' && code !== 'ENODATA';
}
