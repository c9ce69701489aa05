import { readFileSync } from 'node:fs';
import addressparser from 'nodemailer/lib/addressparser';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { oneClickGaps, signHeaders, type KeyRing, type Signature, type SigningKey } from '../auth/index.ts';
import { MAX_LINE, type HeaderSection, type Malformation } from '../message/index.ts';
import { failure, type Outcome } from '../smtp/index.ts';
import type { ClientInfo } from './context.ts';
import { authorDomain, derivedMessageId, rfc5322Date } from './headers.ts';

/** A client limited to sender domains may use those domains and their subdomains only. */
export function senderDomainAllowed(allowed: string[] | undefined, domain: string): boolean {
  if (!allowed) return true;
  const lower = domain.toLowerCase();
  return allowed.some((d) => lower === d || lower.endsWith(`.${d}`));
}

/**
 * The refusal of a malformed message (message/malformed.ts): what is wrong, where, and the
 * fix, and never the offending bytes. A field name is the client's text too: it is quoted,
 * and the reply layer (smtp/reply.ts `printable`) escapes any octet in it beyond ASCII.
 */
export function malformedRefusal({ problem, where, octets }: Malformation): Outcome {
  const place = where === 'body' ? 'the body' : where.field ? `header field "${where.field}"` : `header line ${where.line} (no field name)`;
  const text = {
    nul: `${place} contains a NUL byte, which mail may not carry (RFC 5322 §2.2 and §3.5, RFC 2045 §2.8)`,
    'long-line':
      where === 'body'
        ? `the body has a line longer than ${MAX_LINE} octets (RFC 5322 §2.1.1, RFC 5321 §4.5.3.1.6); an MTA after the relay would break it and the DKIM signature with it: send that part quoted-printable or base64`
        : `${place} has a line of ${octets} octets; RFC 5322 §2.1.1 allows at most ${MAX_LINE}: fold it`,
    '8bit': `${place} contains 8-bit bytes but the client did not use SMTPUTF8 (RFC 6532): use SMTPUTF8 or RFC 2047 encoded-words`,
    'invalid-utf8': `${place} is not valid UTF-8, which SMTPUTF8 requires (RFC 6532 §3.2)`,
  }[problem];
  return failure('permanent', 550, '5.6.0', text);
}

/**
 * Gmail's formatting rules (RFC 5322 §3.6): exactly one From, naming one mailbox; and a client
 * limited to sender domains may not put another one in From. The From address, or the refusal.
 */
export function checkFrom(header: HeaderSection, client: ClientInfo): { from: string } | { refused: Outcome } {
  const fields = header.all('from').map((field) => field.value);
  if (fields.length !== 1) {
    return { refused: failure('permanent', 550, '5.6.0', `the message has ${fields.length} From header fields; RFC 5322 and Gmail require exactly one`) };
  }
  const mailboxes = addressparser(fields[0], { flatten: true }).filter((a) => a.address);
  if (mailboxes.length !== 1 || !/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(mailboxes[0].address)) {
    return { refused: failure('permanent', 550, '5.6.0', `From "${fields[0].slice(0, 100)}" must name exactly one valid address`) };
  }
  if (!senderDomainAllowed(client.senderDomains, authorDomain(header)!)) {
    return { refused: failure('permanent', 550, '5.7.1', `${client.user ? `user ${client.user}` : client.address} may not send as ${mailboxes[0].address} (From)`) };
  }
  return { from: mailboxes[0].address };
}

/** The consumer mailbox providers' domains the relay ships (consumer-domains.yaml: data, with its sources). */
const CONSUMER_DOMAINS = new Set(z.array(z.string().min(1)).parse(parseYaml(readFileSync(new URL('./consumer-domains.yaml', import.meta.url), 'utf8'))));

/** A rule of the relay's own that the message breaks: refused under enforce, recorded under monitor. */
export interface RuleBreach {
  rule: 'consumer-from' | 'bulk-unsubscribe';
  reason: string;
}

/**
 * The relay's rules on what a message may claim, for every destination alike:
 * - nobody else's From: a From in a consumer mailbox provider's domain (the shipped list and
 *   `hygiene.consumerDomains`) that the relay holds no DKIM key for fails DMARC wherever the
 *   provider's policy is honoured, and Gmail's sender guidelines forbid it;
 * - bulk mail (auth/profile.ts `isBulk`, issue 8) offers one-click unsubscribe (RFC 8058),
 *   as Gmail and Yahoo demand of bulk senders; sign.ts always signs both fields (RFC 8058 §4).
 */
export function checkRules(input: { header: HeaderSection; author: string; keys: number; bulk: boolean; consumerDomains: string[] }): RuleBreach[] {
  const breaches: RuleBreach[] = [];
  const domain = input.author.toLowerCase();
  if (input.keys === 0 && (CONSUMER_DOMAINS.has(domain) || input.consumerDomains.includes(domain))) {
    breaches.push({
      rule: 'consumer-from',
      reason: `From ${domain} is a mailbox provider's domain the relay has no DKIM key for: its DMARC policy makes mail it did not send fail (Gmail forbids it outright); send as a domain of your own and put the address in Reply-To`,
    });
  }
  const gaps = input.bulk ? oneClickGaps(input.header) : [];
  if (gaps.length) {
    breaches.push({ rule: 'bulk-unsubscribe', reason: `bulk mail needs one-click unsubscribe (RFC 8058), and the message lacks ${gaps.join(' and ')}` });
  }
  return breaches;
}

/** The refusal of a message that breaks the relay's rules: every breach named. */
export function rulesRefusal(breaches: RuleBreach[]): Outcome {
  // RFC 3463 §3.8: X.7.1, delivery not authorized, message refused.
  return failure('permanent', 550, '5.7.1', breaches.map((b) => b.reason).join('; '));
}

/**
 * Date and Message-ID when missing (RFC 5322 §3.6.1, §3.6.4); internal Received removed when
 * configured. The Message-ID is derived from the message as the client sent it and its
 * envelope sender, so a client's retry of the same bytes carries the same Message-ID as the
 * first attempt (RFC 5322 §3.6.4: one message, one identifier), also at destinations that
 * got the first attempt in a copy the memo does not know of. `added`: the names of the
 * fields added, for the record.
 */
export function applyHygiene(original: HeaderSection, options: { removeReceived: boolean; sha256: string; sender: string; helo: string }): { header: HeaderSection; added: string[] } {
  const kept = options.removeReceived ? original.without('received') : original;
  const added: [name: string, value: string][] = [];
  if (original.value('date') === undefined) added.push(['Date', rfc5322Date()]);
  // RFC 5322 §3.6.4: the right side names the sender's domain (the HELO name for a null
  // sender), not the egress, so a retry that leaves another way carries the same identifier.
  const domain = options.sender.slice(options.sender.lastIndexOf('@') + 1).toLowerCase() || options.helo;
  if (original.value('message-id') === undefined) added.push(['Message-ID', `<${derivedMessageId(options.sha256, options.sender)}@${domain}>`]);
  return { header: kept.appended(added), added: added.map(([name]) => name) };
}

/** DKIM-Signature fields for the message's author domain (its From), and what the record says of them. */
export async function sign(header: HeaderSection, bodyHash: string, keyRing: KeyRing): Promise<{ header: Buffer; record: Signature[] | string; keys: SigningKey[] }> {
  const author = authorDomain(header);
  if (!author) return { header: Buffer.alloc(0), record: 'unsigned: no From address', keys: [] };
  const keys = keyRing.forAuthor(author);
  if (keys.length === 0) return { header: Buffer.alloc(0), record: `unsigned: no DKIM key for ${author}`, keys };
  const signed = await signHeaders(header, bodyHash, keys);
  return { header: signed.header, record: signed.signatures, keys };
}
