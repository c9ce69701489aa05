// The outbound abuse guard: one phished mailbox or infected host must not send thousands of
// messages under the company's IPs before anyone notices (issue 17). Counted at RCPT, so the
// client is told before a message exists, and its own server keeps what it could not send.
import type net from 'node:net';
import type { RateLimiterAbstract } from 'rate-limiter-flexible';
import type { AbuseConfig, Config } from '../config/index.ts';
import { Counter, METRIC_PREFIX, type Logger } from '../observability/index.ts';
import { canonicalAddress, inList, networkList } from '../ip/index.ts';
import { connectShared, count, sharedLimiter, type LimiterOptions, type SharedStore } from '../redis/index.ts';
import { failure, type Outcome } from '../smtp/index.ts';

const PREFIX = 'hygiene-relay:abuse:v1:';

const WINDOWS = [
  { name: 'minute', setting: 'perMinute', seconds: 60 },
  { name: 'hour', setting: 'perHour', seconds: 3600 },
  { name: 'day', setting: 'perDay', seconds: 86_400 },
] as const;

type Kind = 'user' | 'address' | 'sender';
type Windows = AbuseConfig['limits'];

const limited = new Counter({
  name: `${METRIC_PREFIX}abuse_limited_total`,
  help: 'Recipients answered 451 4.7.1 because a sender is over a sending limit, by what was counted (user, address, sender) and the window (minute, hour, day)',
  labelNames: ['kind', 'window'],
});

/** Who is sending, as the RCPT's session knows it. */
export interface Sender {
  /** The authenticated user, if the client authenticated. */
  user?: string;
  /** The client's address. */
  address: string;
  /** The envelope sender (MAIL FROM), empty for a bounce. */
  sender: string;
}

interface Over {
  kind: Kind;
  who: string;
  window: string;
  limit: number;
  recipients: number;
  freesInMs: number;
}

/**
 * Recipients per authenticated user, per client address and per envelope sender, in fixed
 * windows of a minute, an hour and a day. Every recipient the client asks for counts, those
 * refused for being over included: a sender that keeps trying stays over until the window
 * ends, and it ends when the first recipient of the window is that old. Counts go through
 * Redis when `limits.redis` is set, so replicas share them; without it they are this
 * process's or, in a worker, its supervisor's (`local`), as the AUTH failure counts are.
 */
export class SendingLimits {
  #config!: AbuseConfig;
  #logger: Logger;
  #shared?: SharedStore;
  #limiters = new Map<string, RateLimiterAbstract>();
  /** One per sender while it is over: the first recipient refused writes the episode's record. */
  #episodes: RateLimiterAbstract;
  #networks!: { list: net.BlockList; windows: Partial<Windows> }[];

  constructor(config: AbuseConfig, limits: Config['limits'], logger: Logger, local: (options: LimiterOptions) => RateLimiterAbstract) {
    this.#logger = logger.child({ component: 'abuse' });
    this.#shared = limits.redis ? connectShared(limits.redis, { timeout: 250, what: 'sending limits', logger }) : undefined;
    // Points are never what decides: each key has its own limit, compared with the count here.
    const limiter = (keyPrefix: string, duration: number) => sharedLimiter(this.#shared, { points: Number.MAX_SAFE_INTEGER, duration, keyPrefix: `${PREFIX}${keyPrefix}` }, local);
    for (const kind of ['user', 'address', 'sender'] as const) {
      for (const window of WINDOWS) this.#limiters.set(`${kind}:${window.name}`, limiter(`${kind}:${window.name}`, window.seconds));
    }
    this.#episodes = limiter('episode', WINDOWS[WINDOWS.length - 1].seconds);
    this.configure(config);
  }

  /** New limits and overrides (a reload); the counts stay. */
  configure(config: AbuseConfig): void {
    this.#config = config;
    this.#networks = config.overrides.flatMap((entry) => ('address' in entry ? [{ list: networkList(entry.address), windows: entry }] : []));
  }

  get ready(): Promise<void> {
    return this.#shared?.ready ?? Promise.resolve();
  }

  /** The windows that apply to one key: the defaults of its kind, replaced by the first override that matches it. */
  #windows(kind: Kind, key: string): Windows {
    const defaults = kind === 'address' ? this.#config.addressLimits : this.#config.limits;
    const override =
      kind === 'address'
        ? this.#networks.find((entry) => inList(entry.list, key))?.windows
        : kind === 'user'
          ? this.#config.overrides.find((entry) => 'user' in entry && entry.user === key)
          : this.#config.overrides.find((entry) => 'domain' in entry && entry.domain === key.slice(key.lastIndexOf('@') + 1).toLowerCase());
    return {
      perMinute: override?.perMinute ?? defaults.perMinute,
      perHour: override?.perHour ?? defaults.perHour,
      perDay: override?.perDay ?? defaults.perDay,
    };
  }

  /**
   * Counts one recipient for each of the sender's keys; undefined when it may go, else the
   * 451 4.7.1 naming the first limit it is over and when that frees.
   */
  async recipient(from: Sender): Promise<Outcome | undefined> {
    const keys: [Kind, string][] = [['address', canonicalAddress(from.address) ?? from.address]];
    if (from.user !== undefined) keys.unshift(['user', from.user]);
    if (from.sender !== '') keys.push(['sender', from.sender.toLowerCase()]);
    const counted = await Promise.all(
      keys.flatMap(([kind, who]) => {
        const windows = this.#windows(kind, who);
        return WINDOWS.map(async (window): Promise<Over | undefined> => {
          const limit = windows[window.setting];
          if (limit === false) return undefined;
          const res = await count(this.#limiters.get(`${kind}:${window.name}`)!, who);
          return res.consumedPoints > limit ? { kind, who, window: window.name, limit, recipients: res.consumedPoints, freesInMs: res.msBeforeNext } : undefined;
        });
      }),
    );
    const over = counted.filter((o) => o !== undefined);
    if (!over.length) return undefined;
    for (const o of over) limited.inc({ kind: o.kind, window: o.window });
    await this.#episode(from, over);
    const first = over[0];
    const frees = new Date(Date.now() + first.freesInMs).toISOString().replace(/\.\d+Z$/, 'Z');
    const who = first.kind === 'user' ? `user ${first.who}` : first.kind === 'address' ? `client ${first.who}` : `sender <${first.who}>`;
    return failure('temporary', 451, '4.7.1', `${who} is over its limit of ${first.limit} recipients per ${first.window}; try again after ${frees} (in ${Math.ceil(first.freesInMs / 1000)} s)`);
  }

  /**
   * One record while a sender stays over (whichever replica or worker refused first): the
   * episode lasts until the limit that ends last frees, then a new one may begin.
   */
  async #episode(from: Sender, over: Over[]): Promise<void> {
    const principal = from.user !== undefined ? `user:${from.user}` : `address:${from.address}`;
    // At least a second: a duration of 0 would never expire.
    const lasts = Math.max(1, Math.ceil(Math.max(...over.map((o) => o.freesInMs)) / 1000));
    const res = await count(this.#episodes, principal, 1, { customDuration: lasts });
    if (res.consumedPoints !== 1) return;
    this.#logger.warn(
      {
        user: from.user,
        client: from.address,
        sender: from.sender || undefined,
        over: over.map((o) => ({ counted: o.kind, who: o.who, window: o.window, limit: o.limit, recipients: o.recipients, freesIn: `${Math.ceil(o.freesInMs / 1000)}s` })),
        action: 'every further recipient is answered 451 4.7.1 until the limit frees',
      },
      'abuse',
    );
  }

  close(): void {
    this.#shared?.close();
  }
}
