// The outbound abuse guard: one phished mailbox or infected host must not send thousands of
// messages under the company's IPs before anyone notices (issue 17). Counted at RCPT, so the
// client is told before a message exists, and its own server keeps what it could not send.
import type { RateLimiterAbstract } from 'rate-limiter-flexible';
import { LRUCache } from 'lru-cache';
import type { AbuseConfig, Config } from '../config/index.ts';
import { Counter, METRIC_PREFIX, type Logger } from '../observability/index.ts';
import { connectShared, count, sharedLimiter, type LimiterOptions, type SharedStore } from '../redis/index.ts';
import { failure, type Outcome } from '../smtp/index.ts';
import { anomaly, overFloor } from './anomaly.ts';
import { keysOf, LONGEST_WINDOW, SendingLimits, type Over, type Sender } from './limits.ts';
import { openAbuseStore, type AbuseStore, type Hold, type Kind } from './store.ts';

export type { Sender } from './limits.ts';
export type { Hold } from './store.ts';
export { FileAbuseStore, RedisAbuseStore } from './store.ts';
export { median, anomaly } from './anomaly.ts';

const limited = new Counter({
  name: `${METRIC_PREFIX}abuse_limited_total`,
  help: 'Recipients answered 451 4.7.1 because a sender is over a sending limit, by what was counted (user, address, sender), the window (minute, hour, day) and the unit (recipients, messages)',
  labelNames: ['kind', 'window', 'unit'],
});
const flagged = new Counter({
  name: `${METRIC_PREFIX}abuse_flagged_total`,
  help: 'Abuse episodes (one abuse record each), by reason: limit (over a sending limit), anomaly (far over its own baseline), spam_refusals (refused as spam by two or more providers within an hour)',
  labelNames: ['reason'],
});
const heldRecipients = new Counter({
  name: `${METRIC_PREFIX}abuse_held_recipients_total`,
  help: 'Recipients refused 550 5.7.1 because their sender is held (abuse.hold) until an admin releases it',
});

type Reason = 'limit' | 'anomaly' | 'spam_refusals';

/** A refusal by a destination that the playbook put in the reputation or content category. */
export interface SpamRefusal {
  /** The provider's name in the registry, or the recipient domain for a destination it does not know. */
  provider: string;
  recipient: string;
}

// How often one sender's last hour is compared with its baseline while it stays over the
// floor: reading a week of history for every recipient would make the rule the bottleneck.
const ANOMALY_RECHECK_MS = 60_000;

const at = (ms: number) => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
const named = (kind: Kind, who: string) => (kind === 'user' ? `user ${who}` : kind === 'address' ? `client ${who}` : `sender <${who}>`);

/** What the anomaly rule and the providers' feedback judge: the mailbox, its AUTH user or else its envelope sender. */
function principalOf(from: Sender): [Kind, string] | undefined {
  if (from.user !== undefined) return ['user', from.user];
  return from.sender === '' ? undefined : ['sender', from.sender.toLowerCase()];
}

/**
 * Sending limits, holds, the anomaly rule and the providers' feedback, for every RCPT.
 * Holds and history live in the AbuseStore (Redis with `limits.redis`, else the state file
 * beside the delivery memo), so every replica, worker and restart sees the same.
 */
export class AbuseGuard {
  #config: AbuseConfig;
  #logger: Logger;
  #shared?: SharedStore;
  #limits: SendingLimits;
  #store: AbuseStore;
  /** One per sender and reason while an episode lasts: the first refusal or flag writes the record. */
  #episodes: RateLimiterAbstract;
  #checked = new LRUCache<string, number>({ max: 10_000 });
  /** Per transaction, once its first RCPT counted it: the refusal of a message over its limit. */
  #messages = new WeakMap<object, { reply: Outcome; over: Over[] } | undefined>();

  constructor(config: Config, defaultStatePath: string, logger: Logger, local: (options: LimiterOptions) => RateLimiterAbstract) {
    this.#config = config.abuse;
    this.#logger = logger.child({ component: 'abuse' });
    this.#shared = config.limits.redis ? connectShared(config.limits.redis, { timeout: 250, what: 'sending limits', logger }) : undefined;
    this.#limits = new SendingLimits(config.abuse, this.#shared, local);
    this.#episodes = sharedLimiter(this.#shared, { points: Number.MAX_SAFE_INTEGER, duration: LONGEST_WINDOW, keyPrefix: 'hygiene-relay:abuse:v1:episode' }, local);
    this.#store = openAbuseStore(config, this.#shared, defaultStatePath, logger);
  }

  /** New limits, overrides, hold and rule (a reload); the counts, holds and history stay. */
  configure(config: AbuseConfig): void {
    this.#config = config;
    this.#limits.configure(config);
  }

  get ready(): Promise<void> {
    return this.#store.ready;
  }

  /**
   * One RCPT TO `recipient` from `from` in `message` (any object that stands for the
   * transaction; its first RCPT counts the message): undefined when
   * it may go, else the reply. Held → 550 5.7.1; over a limit → 451 4.7.1 naming the limit
   * and when it frees (550 and a hold under abuse.hold, for a user or an envelope sender).
   */
  async recipient(from: Sender, recipient: string, message: object): Promise<Outcome | undefined> {
    const principal = principalOf(from);
    const holdKeys = keysOf(from).filter(([kind]) => kind !== 'address');
    const first = !this.#messages.has(message);
    if (first) this.#messages.set(message, undefined);
    const [hold, over] = await Promise.all([this.#store.heldOf(holdKeys), this.#limits.count(from, 1, first)]);
    if (hold) return this.#heldReply(hold);
    if (over.length) {
      const reply = await this.#over(from, over);
      // A message over its limit is refused whole: its later recipients get the same answer.
      if (first && over[0].unit === 'messages') this.#messages.set(message, { reply, over: over.filter((o) => o.unit === 'messages') });
      return reply;
    }
    const refused = this.#messages.get(message);
    if (refused) {
      for (const o of refused.over) limited.inc({ kind: o.kind, window: o.window, unit: o.unit });
      return refused.reply;
    }
    if (principal && this.#config.anomaly) return this.#judge(from, principal, recipient.slice(recipient.lastIndexOf('@') + 1).toLowerCase());
    return undefined;
  }

  #heldReply(hold: Hold): Outcome {
    heldRecipients.inc();
    return failure('permanent', 550, '5.7.1', `${named(hold.kind, hold.who)} is held by the relay's abuse guard since ${at(hold.since)} (${hold.why}); ask the mail administrator to release it`);
  }

  async #over(from: Sender, over: Over[]): Promise<Outcome> {
    for (const o of over) limited.inc({ kind: o.kind, window: o.window, unit: o.unit });
    const first = over[0];
    // A client address is never held: it is usually the internal server sending for everyone.
    const holdable = this.#config.hold ? over.find((o) => o.kind !== 'address') : undefined;
    const fresh = await this.#episode('limit', `${first.kind}:${first.who}`, from, Math.max(...over.map((o) => o.freesInMs)), {
      over: over.map((o) => ({ counted: o.kind, who: o.who, unit: o.unit, window: o.window, limit: o.limit, count: o.count, freesIn: `${Math.ceil(o.freesInMs / 1000)}s` })),
      action: holdable ? `held: every recipient is refused 550 5.7.1 until \`hygiene-relay abuse release ${holdable.who}\`` : 'every further recipient is answered 451 4.7.1 until the limit frees',
    });
    if (holdable) {
      // The episode's first refusal holds; the record above says so.
      if (fresh) await this.#store.hold({ kind: holdable.kind, who: holdable.who, since: Date.now(), why: `over its limit of ${holdable.limit} ${holdable.unit} per ${holdable.window}` });
      const held = await this.#store.heldOf([[holdable.kind, holdable.who]]);
      if (held) return this.#heldReply(held);
    }
    return failure('temporary', 451, '4.7.1', `${named(first.kind, first.who)} is over its limit of ${first.limit} ${first.unit} per ${first.window}; try again after ${at(Date.now() + first.freesInMs)} (in ${Math.ceil(first.freesInMs / 1000)} s)`);
  }

  /** Adds the recipient to the sender's history; past the floor, compares its last hour with its baseline now and then. */
  async #judge(from: Sender, principal: [Kind, string], domain: string): Promise<Outcome | undefined> {
    const rule = this.#config.anomaly;
    if (!rule) return undefined;
    const key = principal.join(':');
    const now = Date.now();
    const lastHour = await this.#store.sent(key, domain, now);
    if (!overFloor(lastHour, rule) || now - (this.#checked.get(key) ?? 0) < ANOMALY_RECHECK_MS) return undefined;
    this.#checked.set(key, now);
    const why = anomaly(lastHour, await this.#store.baseline(key, now), rule);
    const held = why ? await this.#flag('anomaly', from, principal, why) : undefined;
    return held ? this.#heldReply(held) : undefined;
  }

  /**
   * A flag (anomaly, spam refusals): one record an hour per sender, which a release does not
   * end, so a sender the admin released is not held again for the same hour; under
   * abuse.hold the sender is held: the hold, for a recipient to be refused already.
   */
  async #flag(reason: Reason, from: Sender, [kind, who]: [Kind, string], why: string): Promise<Hold | undefined> {
    const hold = this.#config.hold;
    const fresh = await this.#episode(reason, `${kind}:${who}`, from, 3_600_000, {
      flagged: why,
      action: hold ? `held: every recipient is refused 550 5.7.1 until \`hygiene-relay abuse release ${who}\`` : 'flagged only (abuse.hold is off): its mail still goes',
    });
    if (!hold || !fresh) return undefined;
    await this.#store.hold({ kind, who, since: Date.now(), why });
    return this.#store.heldOf([[kind, who]]);
  }

  /** Whether this starts an episode of `reason` for `subject` (whichever replica or worker got there first), and then its record. */
  async #episode(reason: Reason, subject: string, from: Sender, lastsMs: number, details: Record<string, unknown>): Promise<boolean> {
    // At least a second: a duration of 0 would never expire.
    const res = await count(this.#episodes, `${reason}:${subject}`, 1, { customDuration: Math.max(1, Math.ceil(lastsMs / 1000)) });
    if (res.consumedPoints !== 1) return false;
    flagged.inc({ reason });
    this.#logger.warn({ reason, user: from.user, client: from.address, sender: from.sender || undefined, ...details }, 'abuse');
    return true;
  }

  /**
   * The destinations' refusals of one transaction the playbook calls reputation or content:
   * each counts as one more recipient against the sender's limits (refused mail costs
   * reputation twice), and a sender refused as spam by two providers within an hour is
   * flagged (held under abuse.hold).
   */
  async refused(from: Sender, refusals: readonly SpamRefusal[]): Promise<void> {
    if (!refusals.length) return;
    await this.#limits.count(from, refusals.length, false);
    const principal = principalOf(from);
    if (!principal) return;
    const now = Date.now();
    let providers: string[] = [];
    for (const provider of new Set(refusals.map((r) => r.provider))) providers = await this.#store.refusedAsSpam(principal.join(':'), provider, now);
    if (providers.length >= 2) await this.#flag('spam_refusals', from, principal, `refused as spam by ${providers.join(', ')} within an hour`);
  }

  /** Every hold, oldest first (`hygiene-relay abuse list`). */
  holds(): Promise<Hold[]> {
    return this.#store.holds();
  }

  /** Releases `who` (a user, or an envelope sender), logging who was; resolves to the holds released. */
  async release(who: string): Promise<Hold[]> {
    // An envelope sender is held lower-cased; a user name as it authenticated.
    const lower = who.toLowerCase();
    const released = [...(await this.#store.release(who)), ...(lower === who ? [] : await this.#store.release(lower, ['sender']))];
    // Released, it starts afresh: its counts go, and with them the limit episode, so a
    // sender that goes over again is held again (the anomaly and spam flags last their hour).
    await Promise.all([this.#limits.reset(who), ...released.map((hold) => this.#episodes.delete(`limit:${hold.kind}:${hold.who}`))]);
    for (const hold of released) this.#logger.warn({ kind: hold.kind, who: hold.who, heldSince: at(hold.since), why: hold.why }, 'abuse released');
    return released;
  }

  close(): void {
    this.#store.close();
    this.#shared?.close();
  }
}
