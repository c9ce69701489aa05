import { clip, failure, formatReply, saidOf, type Outcome } from '../smtp/index.ts';
import type { MemoState } from './memo.ts';
import type { Refusal } from './status-notification.ts';

/** What one destination's DATA (or the session before it) did for one recipient. */
export interface RecipientResult {
  address: string;
  outcome: Outcome;
  /** Who said it: `mx host [ip]`, or the destination's name when no session was open. */
  remoteMta: string;
  /** The destination's reply to DATA, when that reply decided it. */
  data?: string;
}

/** What became of a recipient, as the transaction record says it. */
export type Fate = 'delivered' | 'bounced' | 'deferred' | 'refused';

export interface Verdict {
  /** The client's one reply. */
  outcome: Outcome;
  fates: { address: string; fate: Fate }[];
  /** What the memo must hold before the client hears `outcome`, so a retry does nothing twice. */
  remember: { address: string; state: MemoState }[];
}

/** Whether the status notification for `toReport`'s refusals went out. */
export type Notification = 'none' | 'sent' | 'failed';

function uniform(results: RecipientResult[], remembered: number): boolean {
  const kinds = new Set(results.map((r) => r.outcome.kind));
  return remembered === 0 && !kinds.has('accepted') && kinds.size === 1;
}

/**
 * The recipients refused for good whom the relay must report to the sender (RFC 3464) before
 * it answers: only when the destinations disagree (DESIGN §1), and never to a null sender
 * (RFC 5321 §6.1: a notification is never sent about a notification).
 */
export function toReport(results: RecipientResult[], remembered: number, sender: string): Refusal[] {
  if (uniform(results, remembered) || sender === '') return [];
  return results
    .filter((r) => r.outcome.kind === 'permanent')
    .map((r) => ({ address: r.address, reply: saidOf(r.outcome)?.reply ?? r.outcome.reply, remoteMta: r.remoteMta }));
}

/**
 * DESIGN §1, one reply for many destinations. Every destination in the same class (and none
 * served from the memo): that class's reply. Otherwise recipients refused for good are
 * bounced (reported to the sender, or nobody for a null sender), or deferred when the report
 * could not be sent; any deferral makes the answer 451 so the client retries, and the memo
 * skips who has it; else 250.
 *
 * `remembered`: recipients the memo says were already delivered or bounced.
 */
export function verdict(results: RecipientResult[], remembered: number, sender: string, notification: Notification): Verdict {
  if (uniform(results, remembered)) {
    const fate: Fate = results[0].outcome.kind === 'temporary' ? 'deferred' : 'refused';
    return { outcome: results[0].outcome, fates: results.map((r) => ({ address: r.address, fate })), remember: [] };
  }
  const accepted = results.filter((r) => r.outcome.kind === 'accepted');
  const permanent = results.filter((r) => r.outcome.kind === 'permanent');
  // A refusal nobody was told of must not be forgotten: the client keeps the message and retries.
  const reported = sender === '' || notification === 'sent';
  const bounced = reported ? permanent : [];
  const unreported = reported ? [] : permanent;
  const temporary = [
    ...results.filter((r) => r.outcome.kind === 'temporary'),
    ...unreported.map((r) => ({ ...r, outcome: failure('temporary', 451, '4.3.0', `refused by ${r.remoteMta} and the status notification could not be sent`) })),
  ];
  const fates = [
    ...accepted.map((r) => ({ address: r.address, fate: 'delivered' as const })),
    ...bounced.map((r) => ({ address: r.address, fate: 'bounced' as const })),
    ...temporary.map((r) => ({ address: r.address, fate: 'deferred' as const })),
  ];
  const remember = [
    ...accepted.map((r) => ({ address: r.address, state: 'delivered' as const })),
    ...bounced.map((r) => ({ address: r.address, state: 'bounced' as const })),
  ];
  if (temporary.length) {
    const first = temporary[0].outcome.reply;
    const enhanced = first.enhanced?.startsWith('4.') ? first.enhanced : '4.3.0';
    const done = accepted.length + bounced.length + remembered;
    const missing = temporary.map((r) => `<${r.address}>: ${formatReply(r.outcome.reply)}`).join('; ');
    const text = `message reached ${done} of ${done + temporary.length} recipients; send it again and only the missing ones will get it; ${missing}`;
    return { outcome: failure('temporary', 451, enhanced, clip(text, 400)), fates, remember };
  }
  const note = bounced.length ? `; ${bounced.length} refused${sender ? ', reported to the sender' : ' (null sender: nobody to notify)'}` : '';
  return { outcome: { kind: 'accepted', reply: { code: 250, enhanced: '2.0.0', lines: [`message accepted by every destination${note}`] } }, fates, remember };
}
