import type { Reply } from './reply.ts';

/** A destination's own refusal behind an outcome, and the MX host that gave it: what the reply playbook reads. */
export interface Said {
  reply: Reply;
  mxHost: string;
}

/**
 * Every result the client hears. Whether it should retry is part of the type, so a DNS
 * SERVFAIL, a timeout or a lost connection cannot end up as a permanent refusal by mistake.
 */
export type Outcome =
  | { kind: 'accepted'; reply: Reply }
  | { kind: 'temporary'; reply: Reply; cause: string; said?: Said }
  | { kind: 'permanent'; reply: Reply; cause: string; said?: Said };

export function failure(kind: 'temporary' | 'permanent', code: number, enhanced: string, text: string, said?: Said): Outcome {
  return { kind, reply: { code, enhanced, lines: [text] }, cause: text, ...(said ? { said } : {}) };
}

/** The outcome a destination's own reply stands for; `said` keeps that reply as given. */
export function outcomeOf(reply: Reply, cause: string, said?: Said): Outcome {
  if (reply.code < 400) return { kind: 'accepted', reply };
  return { kind: reply.code < 500 ? 'temporary' : 'permanent', reply, cause, ...(said ? { said } : {}) };
}

/** The destination's refusal behind an outcome, if a destination refused. */
export function saidOf(outcome: Outcome): Said | undefined {
  return outcome.kind === 'accepted' ? undefined : outcome.said;
}

/** RFC 3463: when a server gives no enhanced code, the class alone is the honest one. */
export function enhancedOf(reply: Reply): string {
  return reply.enhanced ?? `${Math.floor(reply.code / 100)}.0.0`;
}

/** An error smtp-server turns into the reply line `code enhanced text`. */
export interface SmtpReplyError extends Error {
  responseCode: number;
}

export function toSmtpError(reply: Reply): SmtpReplyError {
  const text = [enhancedOf(reply), reply.lines.join(' ')].filter(Boolean).join(' ');
  return Object.assign(new Error(text), { responseCode: reply.code });
}

/** Keeps a reply line well inside RFC 5321 §4.5.3.1.5's 512 octets. */
export function clip(text: string, max = 300): string {
  return text.length > max ? `${text.slice(0, max - 3)}...` : text;
}
