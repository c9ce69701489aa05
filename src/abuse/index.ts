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
import { LONGEST_WINDOW, SendingLimits, type Over, type Sender } from './limits.ts';
import { openAbuseStore, type AbuseStore, type Hold, type Kind, type LastHour } from './store.ts';

export type { Sender } from './limits.ts';
export type { Hold } from './store.ts';
export { FileAbuseStore, RedisAbuseStore } from './store.ts';
export { median, anomaly } from './anomaly.ts';

const limited = new Counter({
  name: `${METRIC_PREFIX}abuse_limited_total`,
  help: 'Recipients answered 451 4.7.1 because a sender is over a sending limit, by the limit the reply names: what was counted (user, address, sender), the window (minute, hour, day) and the unit (recipients, messages)',
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
  #messages = new WeakMap<object, { reply: Outcome; over: Over } | undefined>();

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
   * transaction; its first RCPT counts the message): undefined when it may go, else the
   * reply. Held → 550 5.7.1; over a limit → 451 4.7.1 naming the limit and when it frees
   * (550 and a hold under abuse.hold, for a user or an envelope sender). The hold, the counts
   * and the history are asked at once: one round trip to Redis for a recipient that goes.
   */
  async recipient(from: Sender, recipient: string, message: object): Promise<Outcome | undefined> {
    const principal = principalOf(from);
    const first = !this.#messages.has(message);
    if (first) this.#messages.set(message, undefined);
    const now = Date.now();
    const domain = recipient.slice(recipient.lastIndexOf('@') + 1).toLowerCase();
    const [hold, over, lastHour] = await Promise.all([
      principal ? this.#store.heldOf([principal]) : undefined,
      this.#limits.count(from, 1, first),
      // Every recipient asked for is history, as it is counted: a sender refused meanwhile
      // still tried, and its baseline hours are its active ones whatever became of them.
      principal && this.#config.anomaly ? this.#store.sent(principal.join(':'), domain, now) : undefined,
    ]);
    if (hold) return this.#heldReply(hold);
    if (over.length) {
      const reply = await this.#over(from, over);
      // A message over its limit is refused whole: its later recipients get the same answer.
      if (first && over[0].unit === 'messages') this.#messages.set(message, { reply, over: over[0] });
      return reply;
    }
    const refused = this.#messages.get(message);
    if (refused) {
      if (refused.reply.kind === 'temporary') limited.inc({ kind: refused.over.kind, window: refused.over.window, unit: refused.over.unit });
      return refused.reply;
    }
    return principal && lastHour ? this.#judge(from, principal, lastHour, now) : undefined;
  }

  #heldReply(hold: Hold): Outcome {
    heldRecipients.inc();
    return failure('permanent', 550, '5.7.1', `${named(hold.kind, hold.who)} is held by the relay's abuse guard since ${at(hold.since)} (${hold.why}); ask the mail administrator to release it`);
  }

  /**
   * Over one or more limits: an episode (and its record) for each sender key over, and under
   * abuse.hold the hold of the user or envelope sender over its own limits.
   */
  async #over(from: Sender, over: Over[]): Promise<Outcome> {
    // A client address is never held: it is usually the internal server sending for everyone.
    const holdable = this.#config.hold ? over.find((o) => o.kind !== 'address') : undefined;
    const subjects = Map.groupBy(over, (o) => `${o.kind}:${o.who}`);
    const fresh = new Set<string>();
    await Promise.all(
      [...subjects].map(async ([subject, overs]) => {
        const holds = holdable !== undefined && subject === `${holdable.kind}:${holdable.who}`;
        const started = await this.#episode('limit', subject, from, Math.max(...overs.map((o) => o.freesInMs)), {
          over: overs.map((o) => ({ counted: o.kind, who: o.who, unit: o.unit, window: o.window, limit: o.limit, count: o.count, freesIn: `${Math.ceil(o.freesInMs / 1000)}s` })),
          action: holds ? `held: every recipient is refused 550 5.7.1 until \`hygiene-relay abuse release ${holdable.who}\`` : 'every further recipient is answered 451 4.7.1 until the limit frees',
        });
        if (started) fresh.add(subject);
      }),
    );
    if (holdable) {
      // The episode's first refusal holds; the record above says so.
      const hold = { kind: holdable.kind, who: holdable.who, since: Date.now(), why: `over its limit of ${holdable.limit} ${holdable.unit} per ${holdable.window}` };
      const held = fresh.has(`${holdable.kind}:${holdable.who}`) && (await this.#store.hold(hold)) ? hold : await this.#store.heldOf([[holdable.kind, holdable.who]]);
      if (held) return this.#heldReply(held);
    }
    const first = over[0];
    limited.inc({ kind: first.kind, window: first.window, unit: first.unit });
    return failure('temporary', 451, '4.7.1', `${named(first.kind, first.who)} is over its limit of ${first.limit} ${first.unit} per ${first.window}; try again after ${at(Date.now() + first.freesInMs)} (in ${Math.ceil(first.freesInMs / 1000)} s)`);
  }

  /** Past the floor, compares the sender's last hour with its baseline, at most once a minute in this process. */
  async #judge(from: Sender, principal: [Kind, string], lastHour: LastHour, now: number): Promise<Outcome | undefined> {
    const rule = this.#config.anomaly;
    if (!rule) return undefined;
    const key = principal.join(':');
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
    const held = { kind, who, since: Date.now(), why };
    return (await this.#store.hold(held)) ? held : this.#store.heldOf([[kind, who]]);
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
   * The destinations' refusals as spam of one transaction (proxy/record.ts `spamRefusals`:
   * the provider of each recipient refused for good in the playbook's reputation or content
   * category): each counts as one more recipient against the sender's limits (mail refused
   * as spam costs the sender's budget twice), and a sender refused as spam by two providers
   * within an hour is flagged (held under abuse.hold).
   */
  async refused(from: Sender, providers: readonly string[]): Promise<void> {
    if (!providers.length) return;
    await this.#limits.count(from, providers.length, false);
    const principal = principalOf(from);
    if (!principal) return;
    const now = Date.now();
    let refusing: string[] = [];
    for (const provider of new Set(providers)) refusing = await this.#store.refusedAsSpam(principal.join(':'), provider, now);
    if (refusing.length >= 2) await this.#flag('spam_refusals', from, principal, `refused as spam by ${refusing.join(', ')} within an hour`);
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
    // Counts first: an RCPT elsewhere between the two must not find the old count in a new episode, and hold again.
    await this.#limits.reset(who);
    await Promise.all(released.map((hold) => this.#episodes.delete(`limit:${hold.kind}:${hold.who}`)));
    for (const hold of released) this.#logger.warn({ kind: hold.kind, who: hold.who, heldSince: at(hold.since), why: hold.why }, 'abuse released');
    return released;
  }

  close(): void {
    this.#store.close();
    this.#shared?.close();
  }
}
