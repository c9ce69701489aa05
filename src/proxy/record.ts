import { classifyReply, type Classification } from '../delivery/index.ts';
import { saidOf, type Outcome } from '../smtp/index.ts';

/** What the reply playbook says about a destination's refusal, as the transaction record shows it. */
export type Explanation = Partial<Pick<Classification, 'category' | 'remediation' | 'rule' | 'provider'>>;

/** Explains the destination's own reply behind an outcome; nothing for acceptances and the relay's own answers. */
export function explain(outcome: Outcome | undefined): Explanation {
  const said = outcome && saidOf(outcome);
  const classification = said && classifyReply(said.reply, { mxHost: said.mxHost });
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
