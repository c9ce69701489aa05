import type net from 'node:net';
import type { RateLimiterAbstract } from 'rate-limiter-flexible';
import type { AbuseConfig } from '../config/index.ts';
import { canonicalAddress, inList, networkList } from '../ip/index.ts';
import { count, sharedLimiter, type LimiterOptions, type SharedStore } from '../redis/index.ts';
import type { Kind } from './store.ts';

const PREFIX = 'hygiene-relay:abuse:v1:';

const WINDOWS = [
  { name: 'minute', setting: 'perMinute', seconds: 60 },
  { name: 'hour', setting: 'perHour', seconds: 3600 },
  { name: 'day', setting: 'perDay', seconds: 86_400 },
] as const;

/** The longest window, in seconds: how long an episode marker may last. */
export const LONGEST_WINDOW = WINDOWS[WINDOWS.length - 1].seconds;

type Unit = 'recipients' | 'messages';
type Limits = AbuseConfig['limits'];

/** Who is sending, as the RCPT's session knows it. */
export interface Sender {
  /** The authenticated user, if the client authenticated. */
  user?: string;
  /** The client's address. */
  address: string;
  /** The envelope sender (MAIL FROM), empty for a bounce. */
  sender: string;
}

/** One limit a sender is over. */
export interface Over {
  kind: Kind;
  who: string;
  unit: Unit;
  window: string;
  limit: number;
  count: number;
  freesInMs: number;
}

/**
 * The keys a sender is counted under: its user and its client address; for a client that did
 * not authenticate, its client address and its envelope sender. An authenticated user's
 * envelope senders are its own: counting them apart would apply the default limits to a
 * user an override allows more, and a release of the user would leave them over.
 */
export function keysOf(from: Sender): [Kind, string][] {
  const address: [Kind, string] = ['address', canonicalAddress(from.address) ?? from.address];
  if (from.user !== undefined) return [['user', from.user], address];
  return from.sender === '' ? [address] : [address, ['sender', from.sender.toLowerCase()]];
}

/**
 * Recipients and messages per authenticated user, per client address and per envelope
 * sender (of a client that did not authenticate), in fixed windows of a minute, an hour and a day. Every recipient the client asks
 * for counts, those refused for being over included: a sender that keeps trying stays over
 * until the window ends, and it ends when the first recipient of the window is that old. A
 * message counts at its first RCPT. Counts go through Redis when `limits.redis` is set, so
 * replicas share them; without it they are this process's or, in a worker, its supervisor's
 * (`local`), as the AUTH failure counts are.
 */
export class SendingLimits {
  #config!: AbuseConfig;
  #limiters = new Map<string, RateLimiterAbstract>();
  #networks!: { list: net.BlockList; windows: AbuseConfig['overrides'][number] }[];

  constructor(config: AbuseConfig, shared: SharedStore | undefined, local: (options: LimiterOptions) => RateLimiterAbstract) {
    // Points are never what decides: each key has its own limit, compared with the count here.
    const limiter = (keyPrefix: string, duration: number) => sharedLimiter(shared, { points: Number.MAX_SAFE_INTEGER, duration, keyPrefix: `${PREFIX}${keyPrefix}` }, local);
    for (const kind of ['user', 'address', 'sender'] as const) {
      for (const window of WINDOWS) {
        // Recipients keep the key names they had before messages were counted too.
        this.#limiters.set(`${kind}:recipients:${window.name}`, limiter(`${kind}:${window.name}`, window.seconds));
        this.#limiters.set(`${kind}:messages:${window.name}`, limiter(`${kind}:messages:${window.name}`, window.seconds));
      }
    }
    this.configure(config);
  }

  /** New limits and overrides (a reload); the counts stay. */
  configure(config: AbuseConfig): void {
    this.#config = config;
    this.#networks = config.overrides.flatMap((entry) => ('address' in entry ? [{ list: networkList(entry.address), windows: entry }] : []));
  }

  /** The windows that apply to one key: the defaults of its kind, replaced where the first override that matches it says so. */
  #limits(kind: Kind, key: string): Limits {
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
      messages: {
        perMinute: override?.messages?.perMinute ?? defaults.messages.perMinute,
        perHour: override?.messages?.perHour ?? defaults.messages.perHour,
        perDay: override?.messages?.perDay ?? defaults.messages.perDay,
      },
    };
  }

  /**
   * Counts `recipients` for each of the sender's keys, and a message when `message` is set;
   * resolves to the limits it is now over, messages first (a message over its limit is
   * refused whole).
   */
  async count(from: Sender, recipients: number, message: boolean): Promise<Over[]> {
    const units: [Unit, number][] = message ? [['messages', 1], ['recipients', recipients]] : [['recipients', recipients]];
    const counted = await Promise.all(
      units.flatMap(([unit, points]) =>
        keysOf(from).flatMap(([kind, who]) => {
          const limits = this.#limits(kind, who);
          const of = unit === 'messages' ? limits.messages : limits;
          return WINDOWS.map(async (window): Promise<Over | undefined> => {
            const limit = of[window.setting];
            if (limit === false) return undefined;
            const res = await count(this.#limiters.get(`${kind}:${unit}:${window.name}`)!, who, points);
            return res.consumedPoints > limit ? { kind, who, unit, window: window.name, limit, count: res.consumedPoints, freesInMs: res.msBeforeNext } : undefined;
          });
        }),
      ),
    );
    return counted.filter((o) => o !== undefined);
  }

  /** Forgets what `who` sent as a user and as an envelope sender (a release): it starts afresh. */
  async reset(who: string): Promise<void> {
    const keys: [Kind, string][] = [['user', who], ['sender', who.toLowerCase()]];
    await Promise.all(keys.flatMap(([kind, key]) => [...this.#limiters].filter(([name]) => name.startsWith(`${kind}:`)).map(([, limiter]) => limiter.delete(key))));
  }
}
