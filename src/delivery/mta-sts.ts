import https from 'node:https';
import type { ConnectionOptions } from 'node:tls';
import { LRUCache } from 'lru-cache';
import type { DNSResolver } from 'mailauth';
import { parsePolicy, resolvePolicy, validateMx } from 'mailauth/lib/mta-sts.js';
import { isTemporaryDnsError, type Resolve } from '../dns/index.ts';
import { z } from 'zod';
import type { SharedStore } from '../redis/index.ts';

/** An MTA-STS policy (RFC 8461 §3.2) as the relay keeps it. */
export interface StsPolicy {
  /** The `id=` of the `_mta-sts` TXT record it was fetched under: a new id means fetch again (§3.1). */
  id: string;
  mode: 'enforce' | 'testing' | 'none';
  /** `mx:` patterns: host names, or `*.` plus a domain for exactly one more label (§4.1). */
  mx: string[];
  /** `max_age` in seconds (§3.2). */
  maxAge: number;
  /** When max_age runs out (ms since the epoch): until then the policy applies even if a live lookup fails (§3.3). */
  expires: number;
}

/**
 * Where fetched policies are kept for their max_age. In-process by default; a Redis-backed
 * one lets replicas share them. Implementations may fail: the relay then fetches anew.
 */
export interface PolicyCache {
  get(domain: string): Promise<StsPolicy | undefined>;
  /** Keep `policy` for `ttl` milliseconds: its max_age, after which it must be fetched again. */
  set(domain: string, policy: StsPolicy, ttl: number): Promise<void>;
}

export class MemoryPolicyCache implements PolicyCache {
  readonly #entries: LRUCache<string, StsPolicy>;

  constructor(max = 10_000) {
    this.#entries = new LRUCache({ max });
  }

  async get(domain: string): Promise<StsPolicy | undefined> {
    return this.#entries.get(domain);
  }

  async set(domain: string, policy: StsPolicy, ttl: number): Promise<void> {
    if (ttl > 0) this.#entries.set(domain, policy, { ttl });
  }
}

const stsPolicy = z.strictObject({
  id: z.string(),
  mode: z.enum(['enforce', 'testing', 'none']),
  mx: z.array(z.string()),
  maxAge: z.number(),
  expires: z.number(),
});

/**
 * Policies shared by every replica through Redis (`delivery.redis`), in front of the
 * in-process cache: one fetch per policy id for the whole fleet. Redis trouble falls back to
 * the in-process copy; a cached policy is only ever an optimisation (RFC 8461 §3.3).
 */
export class SharedPolicyCache implements PolicyCache {
  static readonly prefix = 'hygiene-relay:mta-sts:v1:';
  readonly #local = new MemoryPolicyCache();
  readonly #shared: SharedStore;

  constructor(shared: SharedStore) {
    this.#shared = shared;
  }

  async get(domain: string): Promise<StsPolicy | undefined> {
    const local = await this.#local.get(domain);
    if (local) return local;
    try {
      const text = await this.#shared.client.get(SharedPolicyCache.prefix + domain);
      this.#shared.succeeded();
      const parsed = text === null ? undefined : stsPolicy.safeParse(JSON.parse(text));
      if (!parsed?.success) return undefined;
      await this.#local.set(domain, parsed.data, parsed.data.expires - Date.now());
      return parsed.data;
    } catch (err) {
      if (!(err instanceof SyntaxError)) this.#shared.failed(err);
      return undefined;
    }
  }

  async set(domain: string, policy: StsPolicy, ttl: number): Promise<void> {
    await this.#local.set(domain, policy, ttl);
    if (ttl <= 0) return;
    try {
      await this.#shared.client.set(SharedPolicyCache.prefix + domain, JSON.stringify(policy), 'PX', ttl);
      this.#shared.succeeded();
    } catch (err) {
      this.#shared.failed(err);
    }
  }
}

/** What the relay knows of a domain's policy right now. */
export interface StsLookup {
  /** The policy in force (possibly mode `none`); undefined when the domain has none. */
  policy?: StsPolicy;
  /** Why no live policy could be had; a cached `policy`, if any, still applies (§3.3). */
  error?: string;
  /** The failure may pass (DNS SERVFAIL, timeout): matters only to a sender that needs a policy. */
  temporary?: boolean;
}

export interface MtaStsOptions {
  resolve: Resolve;
  cache?: PolicyCache;
  /** CAs trusted for the policy host's certificate; the system's when absent (tests pass their CA). */
  ca?: ConnectionOptions['ca'];
  /** The policy host's HTTPS port: 443 (§3.3); tests serve policies on a free port. */
  port?: number;
  /** The whole fetch, in ms. RFC 8461 §3.3 suggests at most a minute; a client waits at RCPT meanwhile. */
  timeout?: number;
  /** Clock for max_age (tests move it forward instead of waiting). */
  now?: () => number;
}

const POLICY_PATH = '/.well-known/mta-sts.txt';
// RFC 8461 §3.3: a policy is small; 64 KiB is the limit it suggests.
const MAX_POLICY_SIZE = 64 * 1024;
const DEFAULT_TIMEOUT = 20_000;
// A policy host that does not answer would cost every recipient of its domain a whole fetch
// timeout: after a failure (and with no cached policy, so delivery goes on as without one)
// the same policy id is not tried again for this long.
const FETCH_RETRY_DELAY = 5 * 60_000;

/** Whether `mx` is allowed by the policy's `mx:` patterns (mailauth implements §4.1). */
export function mxMatches(policy: StsPolicy, mx: string): boolean {
  return validateMx(mx, { mode: policy.mode, mx: policy.mx }).valid;
}

/**
 * MTA-STS (RFC 8461) for the domains the relay delivers to: discovery through the relay's
 * resolver (mailauth's resolvePolicy), the policy file fetched over HTTPS and parsed by
 * mailauth's parsePolicy, cached for its max_age.
 *
 * The HTTPS fetch is our own rather than mailauth's fetchPolicy/getPolicy: mailauth's
 * request trusts only the process-wide CA store and always uses port 443, so it could be
 * neither tested on loopback with a test CA nor pointed at anything but the public policy
 * host. This one connects to the address our resolver gives, with the configured trust.
 */
export class MtaSts {
  readonly #resolve: Resolve;
  readonly #cache: PolicyCache;
  readonly #ca: ConnectionOptions['ca'];
  readonly #port: number;
  readonly #timeout: number;
  readonly #now: () => number;
  readonly #failed = new LRUCache<string, string>({ max: 1000, ttl: FETCH_RETRY_DELAY });
  readonly #pending = new Map<string, Promise<StsLookup>>();

  constructor(options: MtaStsOptions) {
    this.#resolve = options.resolve;
    this.#cache = options.cache ?? new MemoryPolicyCache();
    this.#ca = options.ca;
    this.#port = options.port ?? 443;
    this.#timeout = options.timeout ?? DEFAULT_TIMEOUT;
    this.#now = options.now ?? Date.now;
  }

  /** The domain's policy. Never rejects: every failure is fail-open (§3.3) and said in `error`. */
  lookup(domain: string): Promise<StsLookup> {
    const name = domain.toLowerCase().replace(/\.$/, '');
    // Recipients of one domain arriving together cost one discovery and one fetch.
    let pending = this.#pending.get(name);
    if (!pending) {
      pending = this.#lookup(name).finally(() => this.#pending.delete(name));
      this.#pending.set(name, pending);
    }
    return pending;
  }

  async #lookup(domain: string): Promise<StsLookup> {
    const cached = await this.#cached(domain);
    let id: string | false;
    try {
      id = await resolvePolicy(domain, { resolver: this.#resolve as unknown as DNSResolver });
    } catch (err) {
      const error = `MTA-STS discovery for ${domain} failed: ${describe(err)}`;
      return { policy: cached, error, temporary: !cached && isTemporaryDnsError(err) };
    }
    // §3.3/§8.3: a domain withdraws a policy by publishing mode "none" under a new id; until
    // then a cached, unexpired policy stays in force even when the TXT record is gone.
    if (!id) return cached ? { policy: cached } : {};
    if (cached?.id === id) return { policy: cached };
    const failure = this.#failed.get(`${domain} ${id}`);
    if (failure) return { policy: cached, error: failure };
    try {
      const parsed = await this.#fetch(domain);
      const maxAge = parsed.maxAge ?? 0;
      const policy: StsPolicy = { id, mode: parsed.mode, mx: parsed.mx ?? [], maxAge, expires: this.#now() + maxAge * 1000 };
      // Cache trouble (Redis away) costs a fetch next time, never this delivery.
      await this.#cache.set(domain, policy, maxAge * 1000).catch(() => undefined);
      return { policy };
    } catch (err) {
      const error = `MTA-STS policy of ${domain} (id ${id}) could not be fetched from https://mta-sts.${domain}${POLICY_PATH}: ${describe(err)}`;
      this.#failed.set(`${domain} ${id}`, error);
      return { policy: cached, error };
    }
  }

  /** The cached policy while its max_age lasts, whatever the cache's own expiry does. */
  async #cached(domain: string): Promise<StsPolicy | undefined> {
    const policy = await this.#cache.get(domain).catch(() => undefined);
    return policy && policy.expires > this.#now() ? policy : undefined;
  }

  async #fetch(domain: string): Promise<ReturnType<typeof parsePolicy>> {
    const host = `mta-sts.${domain}`;
    const address = await this.#address(host);
    const body = await new Promise<Buffer>((resolve, reject) => {
      const request = https.request(
        {
          host: address,
          port: this.#port,
          // §3.3: the certificate must be valid for the policy host, checked as for any HTTPS name.
          servername: host,
          headers: { host },
          path: POLICY_PATH,
          method: 'GET',
          ca: this.#ca,
          rejectUnauthorized: true,
          // A fresh connection each time: nothing verified under other options is reused.
          agent: false,
        },
        (response) => {
          // §3.3: only 200 is a policy; redirects are not followed, HTTP caching is not used.
          if (response.statusCode !== 200) {
            response.resume();
            fail(new Error(`HTTP ${response.statusCode}`));
            return;
          }
          const chunks: Buffer[] = [];
          let size = 0;
          response.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_POLICY_SIZE) fail(new Error(`policy larger than ${MAX_POLICY_SIZE} bytes`));
            else chunks.push(chunk);
          });
          response.on('end', () => {
            clearTimeout(timer);
            resolve(Buffer.concat(chunks));
          });
          response.on('error', fail);
        },
      );
      const timer = setTimeout(() => fail(new Error(`no policy within ${this.#timeout} ms`)), this.#timeout);
      function fail(err: Error): void {
        clearTimeout(timer);
        request.destroy();
        reject(err);
      }
      request.on('error', fail);
      request.end();
    });
    return parsePolicy(body);
  }

  /** The policy host's address through the relay's resolver (IPv4 first, as mailauth does). */
  async #address(host: string): Promise<string> {
    for (const rrtype of ['A', 'AAAA'] as const) {
      try {
        const addresses = await this.#resolve(host, rrtype);
        if (addresses.length) return addresses[0];
      } catch (err) {
        if (isTemporaryDnsError(err)) throw err;
      }
    }
    throw new Error(`${host} has no address`);
  }
}

function describe(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  const message = (err as Error).message ?? String(err);
  return code && !message.includes(code) ? `${code}: ${message}` : message;
}
