import { printable, type Reply } from './reply.ts';

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
  const text = printable([enhancedOf(reply), reply.lines.join(' ')].filter(Boolean).join(' '));
  return Object.assign(new Error(text), { responseCode: reply.code });
}

// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its code and CRLF. Text is
// wrapped at 400 (printable text is one octet a character), leaving room for "550-5.7.26 ".
const LINE_TEXT = 400;
const ENHANCED_TEXT = /^([245]\.\d{1,3}\.\d{1,3}) (.*)$/s;

/**
 * Reply text (`5.7.26 …`, the enhanced code first), made printable, and when too long for one
 * line, as the lines of a multi-line reply (RFC 5321 §4.2.1), broken at spaces, each led by
 * the enhanced code as RFC 2034 §4 asks of every line. The relay's listeners write every reply
 * text through this, so what it returns is all a client is ever sent.
 */
export function wrapReplyText(raw: string): string | string[] {
  const text = printable(raw);
  if (text.length <= LINE_TEXT) return text;
  const [, enhanced, rest] = ENHANCED_TEXT.exec(text) ?? [undefined, undefined, text];
  const lines: string[] = [];
  let line = '';
  for (const word of rest.split(' ')) {
    // A word longer than a line (a long record) is cut where the line is full.
    for (let piece = word; piece; ) {
      const room = LINE_TEXT - line.length - (line ? 1 : 0);
      if (piece.length <= room) {
        line = line ? `${line} ${piece}` : piece;
        piece = '';
      } else if (line) {
        lines.push(line);
        line = '';
      } else {
        lines.push(piece.slice(0, LINE_TEXT));
        piece = piece.slice(LINE_TEXT);
      }
    }
  }
  if (line) lines.push(line);
  return enhanced ? lines.map((l) => `${enhanced} ${l}`) : lines;
}

/** Keeps a reply line well inside RFC 5321 §4.5.3.1.5's 512 octets. */
export function clip(text: string, max = 300): string {
  return text.length > max ? `${text.slice(0, max - 3)}...` : text;
}
