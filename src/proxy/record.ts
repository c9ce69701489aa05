import type { ProfileVerdict, Signature, SpfVerdict } from '../auth/index.ts';
import type { Classification, Connected, Destination, Playbook, UpstreamLease } from '../delivery/index.ts';
import type { Egress } from '../identity/index.ts';
import { LRUCache } from 'lru-cache';
import { Counter, Histogram, METRIC_PREFIX, SECONDS_BUCKETS, type Logger } from '../observability/index.ts';
import { formatReply, saidOf, type Outcome } from '../smtp/index.ts';
import type { ClientInfo } from './context.ts';
import type { RuleBreach } from './hygiene.ts';

const transactions = new Counter({
  name: `${METRIC_PREFIX}transactions_total`,
  help: "Client transactions by outcome: accepted (250 at the end of DATA), temporary (4xx), permanent (5xx), abandoned (the client left before the end of DATA)",
  labelNames: ['outcome'],
});
const recipients = new Counter({
  name: `${METRIC_PREFIX}recipients_total`,
  help: "Recipients by what became of them, the class of the destination's own reply (2xx, 4xx, 5xx; none when the relay answered itself), the provider and the playbook category of a refusal",
  labelNames: ['result', 'reply_class', 'provider', 'category'],
});
const policyRefusals = new Counter({
  name: `${METRIC_PREFIX}policy_refusals_total`,
  help: "Mail the relay's own policy refused, by reason: untrusted_client, sender_domain (a client sending as a domain it may not), spf (at MAIL FROM), preflight (the author domain's floor), provider_profile (a destination's provider would refuse it), consumer_from (a From in a mailbox provider's domain), bulk_unsubscribe (bulk mail without one-click unsubscribe)",
  labelNames: ['reason'],
});
const transactionSeconds = new Histogram({
  name: `${METRIC_PREFIX}transaction_seconds`,
  help: "Client transactions from MAIL FROM to the final reply (every destination's answer included)",
  buckets: SECONDS_BUCKETS,
});

/** Why the relay's own policy refused, as the metrics count it. */
export type PolicyReason = 'untrusted_client' | 'sender_domain' | 'spf' | 'preflight' | 'provider_profile';

/** What the reply playbook says about a destination's refusal, as the transaction record shows it. */
export type Explanation = Partial<Pick<Classification, 'category' | 'remediation' | 'rule' | 'provider'>>;

/** Explains the destination's own reply behind an outcome; nothing for acceptances and the relay's own answers. */
export function explain(outcome: Outcome | undefined, playbook: Playbook): Explanation {
  const said = outcome && saidOf(outcome);
  const classification = said && playbook.classify(said.reply, { mxHost: said.mxHost });
  if (!classification) return {};
  const { category, remediation, rule, provider } = classification;
  return { category, remediation, rule, provider };
}

/**
 * What became of a recipient (README, "Logs"): delivered; bounced (refused for good and
 * reported to the sender); refused or deferred (the client was told so, at RCPT or at the end
 * of DATA); already-delivered / already-bounced (the memo skipped it on a retry); abandoned
 * (the client went away or started over before the end of DATA).
 */
export type RecipientResult = 'delivered' | 'bounced' | 'refused' | 'deferred' | 'already-delivered' | 'already-bounced' | 'abandoned';

/** The class of the destination's last reply for a recipient: what the metrics label it with. */
function replyClass(recipient: RecipientRecord): string {
  const reply = recipient.destination?.data ?? recipient.destination?.rcpt;
  return reply && /^[245]\d\d/.test(reply) ? `${reply[0]}xx` : 'none';
}

/** Counts the transaction its record describes: its outcome, each recipient, the policy refusals in it. */
export function countTransaction(facts: TransactionFacts, record: ReturnType<typeof transactionRecord>): void {
  transactions.inc({ outcome: facts.outcome.kind });
  if (facts.outcome.kind !== 'abandoned') transactionSeconds.observe(record.ms / 1000);
  for (const recipient of record.recipients) {
    const leg = facts.legs.find((l) => l.recipients.includes(recipient.address));
    const provider = recipient.provider ?? leg?.lease?.provider?.name ?? 'none';
    recipients.inc({ result: recipient.result, reply_class: replyClass(recipient), provider, category: recipient.category ?? 'none' });
  }
  if ((facts.preflight as { verdict?: string } | undefined)?.verdict === 'refused') policyRefusals.inc({ reason: 'preflight' });
  if (facts.rules?.verdict === 'refused') for (const { rule } of facts.rules.breaches) policyRefusals.inc({ reason: rule === 'consumer-from' ? 'consumer_from' : 'bulk_unsubscribe' });
  for (const leg of facts.legs) if (leg.profile?.verdict === 'refused' || leg.profile?.verdict === 'deferred') policyRefusals.inc({ reason: 'provider_profile' });
}

/**
 * The provider of each recipient a destination refused for good in the playbook's reputation
 * or content category (blocked as spam, a poor reputation, unsolicited content): the
 * registry's name, else the recipient's domain (a destination it does not know is a provider
 * of its own). Not a deferral, which the client's retry would count again, and not a public
 * blocklist's listing (the rule's `listing`), which is the relay's standing, not one sender's.
 */
export function spamRefusals(facts: TransactionFacts, record: ReturnType<typeof transactionRecord>): string[] {
  return record.recipients.flatMap((recipient) => {
    if (recipient.category !== 'reputation' && recipient.category !== 'content') return [];
    if (recipient.result !== 'refused' && recipient.result !== 'bounced') return [];
    if (facts.playbook.rules.find((rule) => rule.id === recipient.rule)?.listing) return [];
    const leg = facts.legs.find((l) => l.recipients.includes(recipient.address));
    return [recipient.provider ?? leg?.lease?.provider?.name ?? recipient.address.slice(recipient.address.lastIndexOf('@') + 1).toLowerCase()];
  });
}

/** One recipient in the transaction record. */
export interface RecipientRecord extends Explanation {
  address: string;
  /** The MX host that answered for it, `host [ip]`, or the destination's name when none did. */
  mx?: string;
  /** The relay's reply to its RCPT TO, exactly as the client got it. */
  client?: string;
  /** The destination's own replies for it, exactly as the destination gave them. */
  destination?: { rcpt?: string; data?: string };
  /** `accepted` only while the transaction runs: a record never ends with it. */
  result: RecipientResult | 'accepted';
}

/** What is known of the message itself once DATA began. */
export interface MessageFacts {
  size?: number;
  messageId?: string;
  dkim?: Signature[] | string;
  sha256?: string;
  spooledToDisk?: boolean;
  dataMs?: number;
}

/** One destination's part, as a Leg (leg.ts) holds it. */
export interface LegFacts {
  destination: Destination;
  /** The recipients it accepted at RCPT. */
  recipients: readonly string[];
  connected?: Connected;
  lease?: UpstreamLease;
  data?: string;
  refused?: Outcome;
  lost?: string;
  explanation?: Explanation;
  profile?: ProfileVerdict;
}

export interface TransactionFacts {
  id: string;
  client: ClientInfo;
  sender: string;
  recipients: RecipientRecord[];
  egress: Egress;
  spf?: SpfVerdict;
  preflight?: Record<string, unknown>;
  /** The relay's own rules the message breaks (proxy/hygiene.ts), refused under enforce. */
  rules?: { verdict: 'refused' | 'would refuse (monitor)'; breaches: RuleBreach[] };
  addedHeaders: string[];
  legs: LegFacts[];
  message: MessageFacts;
  /** What the transaction concluded; `abandoned` names the stage the client left at. */
  outcome: Outcome | { kind: 'abandoned'; stage: string; reason: string };
  /** The final reply exactly as the client got it; absent when none could be written. */
  reply?: string;
  playbook: Playbook;
  started: number;
}

/** The one `transaction` record (README, "Logs"): everything an admin needs to act on it. */
export function transactionRecord(facts: TransactionFacts): Record<string, unknown> & { recipients: RecipientRecord[]; ms: number } {
  const upstream = facts.legs.map(({ destination, connected, lease, data, lost, refused, explanation, profile }) => ({
    destination: destination.key,
    mxHost: connected?.mxHost,
    mxIp: connected?.mxIp,
    // What TLS the destination needed (who demanded verified TLS, MTA-STS, REQUIRETLS) and what the session had.
    tlsPolicy: {
      required: destination.tls.requiredBy.length ? destination.tls.requiredBy : undefined,
      requireTls: destination.tls.requireTls || undefined,
      mtaSts: destination.tls.mtaSts ? { mode: destination.tls.mtaSts.mode, id: destination.tls.mtaSts.id, excluded: destination.tls.mtaSts.excluded } : undefined,
      wouldFail: connected?.wouldFail,
    },
    tls: connected?.session.tls ?? null,
    reused: lease?.reused,
    auth: connected?.authUser,
    skipped: connected?.skipped.length ? connected.skipped : undefined,
    // Which provider profile judged the message here, and what it concluded (auth/profile.ts).
    profile: profile && { ...profile, outcome: undefined, reply: profile.outcome && formatReply(profile.outcome.reply) },
    // The destination's reply to DATA as it gave it; why no recipient could go this way.
    data,
    lost,
    unusable: refused && refused.kind !== 'accepted' ? refused.cause : undefined,
    ...explanation,
  }));
  const { client, egress, outcome } = facts;
  const abandoned = outcome.kind === 'abandoned' ? outcome : undefined;
  const answered = outcome.kind === 'abandoned' ? undefined : outcome;
  // A recipient accepted at RCPT ends with what became of the message.
  const finalResult: RecipientResult = abandoned ? 'abandoned' : outcome.kind === 'temporary' ? 'deferred' : 'refused';
  const recipients = facts.recipients.map((r) => (r.result === 'accepted' ? { ...r, result: finalResult } : r));
  return {
    id: facts.id,
    client: { ip: client.address, helo: client.helo, user: client.user, tls: client.secure },
    envelope: { mailFrom: facts.sender, rcptTo: facts.recipients.map((r) => r.address) },
    recipients,
    egress: { ip: egress.ip, helo: egress.helo, verified: egress.verified },
    spf: facts.spf,
    preflight: facts.preflight,
    rules: facts.rules,
    addedHeaders: facts.addedHeaders.length ? facts.addedHeaders : undefined,
    upstream,
    ...facts.message,
    outcome: outcome.kind,
    ...(abandoned ? { abandoned: { stage: abandoned.stage, reason: abandoned.reason } } : {}),
    reply: facts.reply,
    // When the answer is a destination's own refusal: what it means and what to do.
    ...explain(answered, facts.playbook),
    ms: Date.now() - facts.started,
  };
}

/** A refusal outside a transaction record: a connection, AUTH, MAIL FROM, a command out of place. */
export interface RefusalFacts {
  /** The client's address. */
  client: string;
  /** Where in the session: connect, AUTH, MAIL FROM, RCPT TO, or the command smtp-server refused. */
  stage: string;
  /** The reply exactly as the client got it; absent when none could be written. */
  reply?: string;
  reason: string;
  helo?: string;
  user?: string;
  sender?: string;
  spf?: SpfVerdict;
  /** A client the relay serves (a trusted network or an authenticated user): its refusals are each a record. */
  trusted?: boolean;
  /** The relay's own policy refused it (not a protocol error, not AUTH): counted by reason. */
  policy?: PolicyReason;
}

/** How long one address's refusals count as one flood. */
const FLOOD_WINDOW_MS = 60_000;

/**
 * Every refusal is a record (`msg: "refused"`), as Postfix logs every `NOQUEUE: reject`, so an
 * admin can grep for them; but an address refused again within a minute is only counted, and
 * summarised in one `refused repeatedly` record at the end of its minute, so a flood leaves a
 * few records, never one per attempt. Bounded: at most `maxAddresses` windows are kept.
 */
export class RefusalLog {
  readonly #logger: Logger;
  readonly #windows: LRUCache<string, { until: number; count: number; last: RefusalFacts }>;
  readonly #timer: NodeJS.Timeout;

  constructor(logger: Logger, maxAddresses = 10_000) {
    this.#logger = logger;
    this.#windows = new LRUCache({ max: maxAddresses, dispose: (window, client) => this.#summarise(client, window) });
    this.#timer = setInterval(() => this.#expire(), FLOOD_WINDOW_MS / 4).unref();
  }

  refused(refusal: RefusalFacts): void {
    if (refusal.policy) policyRefusals.inc({ reason: refusal.policy });
    // An internal server's refusals concern its users' mail, each one different: never summarised.
    if (refusal.trusted) {
      this.#logger.info(refusal, 'refused');
      return;
    }
    const window = this.#windows.get(refusal.client);
    if (window && window.until > Date.now()) {
      window.count++;
      window.last = refusal;
      return;
    }
    this.#windows.delete(refusal.client);
    this.#windows.set(refusal.client, { until: Date.now() + FLOOD_WINDOW_MS, count: 0, last: refusal });
    this.#logger.info(refusal, 'refused');
  }

  /** Summarises what is still counted; the relay is stopping. */
  close(): void {
    clearInterval(this.#timer);
    this.#windows.clear();
  }

  #expire(): void {
    const now = Date.now();
    for (const [client, window] of this.#windows.entries()) if (window.until <= now) this.#windows.delete(client);
  }

  #summarise(client: string, window: { until: number; count: number; last: RefusalFacts }): void {
    if (window.count === 0) return;
    this.#logger.info({ client, count: window.count, seconds: FLOOD_WINDOW_MS / 1000, last: window.last }, 'refused repeatedly');
  }
}
