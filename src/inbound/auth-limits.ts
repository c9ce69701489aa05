import { setTimeout as delay } from 'node:timers/promises';
import type { RateLimiterAbstract, RateLimiterRes } from 'rate-limiter-flexible';
import type { Config } from '../config/index.ts';
import type { Logger } from '../observability/index.ts';
import { connectShared, count, sharedLimiter, type LimiterOptions, type SharedStore } from '../redis/index.ts';

const PREFIX = 'hygiene-relay:auth:v1:';
/** The first failure waits this long before its 535, each further one twice as long, up to MAX_DELAY_MS. */
const FIRST_DELAY_MS = 250;
const MAX_DELAY_MS = 8000;

/**
 * Failed AUTH attempts counted across connections, per client address and per user name
 * (issue: three failures closed a connection, and the next connection started from zero).
 * Each failure waits longer before its answer; a key over its limit is blocked for
 * `block`, during which every AUTH from that address or for that user is answered 454 at once,
 * the right password too and without an scrypt run, and the reply never says which limit
 * it was. Counts go through Redis when `limits.redis` is set, so replicas share them; while
 * Redis is away each process counts alone (rate-limiter-flexible's insurance limiter).
 * Without Redis they are this process's, or, in a worker, its supervisor's (`local`).
 */
export class AuthLimits {
  #address: RateLimiterAbstract;
  #user: RateLimiterAbstract;
  #settings: Config['limits']['authFailures'];
  #shared?: SharedStore;
  #logger: Logger;

  constructor(limits: Config['limits'], logger: Logger, local: (options: LimiterOptions) => RateLimiterAbstract) {
    this.#settings = limits.authFailures;
    this.#logger = logger;
    this.#shared = limits.redis ? connectShared(limits.redis, { timeout: 250, what: 'AUTH failure counts', logger }) : undefined;
    this.#address = this.#limiter('address', limits.authFailures.perAddress, local);
    this.#user = this.#limiter('user', limits.authFailures.perUser, local);
  }

  #limiter(kind: string, points: number, local: (options: LimiterOptions) => RateLimiterAbstract): RateLimiterAbstract {
    const options = { points, duration: Math.ceil(this.#settings.window / 1000), keyPrefix: `${PREFIX}${kind}` };
    return sharedLimiter(this.#shared, options, local);
  }

  get ready(): Promise<void> {
    return this.#shared?.ready ?? Promise.resolve();
  }

  /** True while the address or the user name is blocked: the attempt is answered 454 without checking the password. */
  async blocked(address: string, user: string): Promise<boolean> {
    const [byAddress, byUser] = await Promise.all([this.#address.get(address), this.#user.get(user)]);
    return this.#over(byAddress, this.#settings.perAddress) || this.#over(byUser, this.#settings.perUser);
  }

  #over(res: RateLimiterRes | null, points: number): boolean {
    return res !== null && res.consumedPoints >= points;
  }

  /**
   * Counts a failure; resolves after the delay its count earns. The failure that reaches a
   * limit blocks the key and logs the episode, once (whichever replica counted it).
   */
  async failed(address: string, user: string): Promise<void> {
    const [byAddress, byUser] = await Promise.all([this.#count(this.#address, address), this.#count(this.#user, user)]);
    const block = Math.ceil(this.#settings.block / 1000);
    const episode = (what: Record<string, string>, failures: number) =>
      this.#logger.warn({ ...what, failures, window: `${this.#settings.window / 1000}s`, blockedFor: `${block}s` }, 'AUTH guessing: blocked (every AUTH answered 454 4.7.0 until the block ends)');
    if (byAddress === this.#settings.perAddress) {
      await this.#address.block(address, block);
      episode({ client: address }, byAddress);
    }
    if (byUser === this.#settings.perUser) {
      await this.#user.block(user, block);
      episode({ user }, byUser);
    }
    const failures = Math.max(byAddress, byUser);
    await delay(Math.min(FIRST_DELAY_MS * 2 ** (failures - 1), MAX_DELAY_MS));
  }

  async #count(limiter: RateLimiterAbstract, key: string): Promise<number> {
    return (await count(limiter, key)).consumedPoints;
  }

  close(): void {
    this.#shared?.close();
  }
}
