import type { ProfileVerdict, Signature, SpfVerdict } from '../auth/index.ts';
import type { Classification, Connected, Destination, Playbook, UpstreamLease } from '../delivery/index.ts';
import type { Egress } from '../identity/index.ts';
import { formatReply, saidOf, type Outcome } from '../smtp/index.ts';
import type { ClientInfo } from './context.ts';

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

/** One recipient in the transaction record. */
export interface RecipientRecord extends Explanation {
  address: string;
  destination?: string;
  rcpt: string;
  data?: string;
  result: 'accepted' | 'refused' | 'deferred' | 'delivered' | 'bounced' | 'already-delivered' | 'already-bounced';
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
  connected?: Connected;
  lease?: UpstreamLease;
  data?: string;
  refused?: Outcome;
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
  addedHeaders: string[];
  legs: LegFacts[];
  message: MessageFacts;
  /** What the client was answered at the end. */
  outcome: Outcome;
  playbook: Playbook;
  started: number;
}

/** The one `transaction` record (README, "Logs"): everything an admin needs to act on it. */
export function transactionRecord(facts: TransactionFacts): Record<string, unknown> {
  const upstream = facts.legs.map(({ destination, connected, lease, data, refused, explanation, profile }) => ({
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
    data,
    refused: refused ? formatReply(refused.reply) : undefined,
    ...explanation,
  }));
  const { client, egress, outcome } = facts;
  return {
    id: facts.id,
    client: { ip: client.address, helo: client.helo, user: client.user, tls: client.secure },
    envelope: { mailFrom: facts.sender, rcptTo: facts.recipients.map((r) => r.address) },
    recipients: facts.recipients,
    egress: { ip: egress.ip, helo: egress.helo, verified: egress.verified },
    spf: facts.spf,
    preflight: facts.preflight,
    addedHeaders: facts.addedHeaders.length ? facts.addedHeaders : undefined,
    upstream,
    ...facts.message,
    outcome: outcome.kind,
    reply: formatReply(outcome.reply),
    // When the answer is a destination's own refusal: what it means and what to do.
    ...explain(outcome, facts.playbook),
    ms: Date.now() - facts.started,
  };
}
