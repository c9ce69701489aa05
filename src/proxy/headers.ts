import { createHash } from 'node:crypto';
import addressparser from 'nodemailer/lib/addressparser';
import { canonicalAddress } from '../ip/index.ts';
import type { HeaderSection } from '../message/index.ts';
import type { ClientInfo } from './context.ts';

/**
 * The left part of a Message-ID for a message that has none: a hash of the message's SHA-256
 * as the client sent it and of the envelope sender, so the same bytes retried give the same id.
 */
export function derivedMessageId(sha256: string, sender: string): string {
  return createHash('sha256').update(`${sha256}\0${sender}`).digest('hex').slice(0, 32);
}

/** RFC 5322 §3.3 date-time, always in UTC. */
export function rfc5322Date(date = new Date()): string {
  return date.toUTCString().replace(/GMT$/, '+0000');
}

/**
 * RFC 5321 §4.4: every relay adds a Received line naming where the message came from and
 * who took it; RFC 3848 names the protocol (ESMTP, ESMTPS with TLS, ESMTPA/ESMTPSA with AUTH).
 */
export function receivedHeader(options: { client: ClientInfo; by: string; id: string; recipients: string[] }): Buffer {
  const { client } = options;
  const protocol = `ESMTP${client.secure ? 'S' : ''}${client.user ? 'A' : ''}`;
  // RFC 5321 §4.4: the address literal, tagged for IPv6; a HELO that is no domain goes in the comment.
  const address = canonicalAddress(client.address) ?? client.address;
  const literal = address.includes(':') ? `[IPv6:${address}]` : `[${address}]`;
  const helo = /^[a-z0-9.-]+$/i.test(client.helo) ? client.helo : 'unknown';
  const from = helo === client.helo ? `${helo} (${literal})` : `${helo} (helo=${JSON.stringify(client.helo.replace(/[^\x20-\x7e]/g, '?'))} ${literal})`;
  const forClause = options.recipients.length === 1 ? `\r\n\tfor <${options.recipients[0]}>` : '';
  return Buffer.from(`Received: from ${from}\r\n\tby ${options.by} (hygiene-relay) with ${protocol} id ${options.id}${forClause};\r\n\t${rfc5322Date()}\r\n`);
}

/** The domain of the first address of the first From field: whose DKIM key signs the message. */
export function authorDomain(header: HeaderSection): string | undefined {
  const from = header.value('from');
  if (from === undefined) return undefined;
  const first = addressparser(from, { flatten: true })[0];
  const at = first?.address.lastIndexOf('@') ?? -1;
  return at > 0 ? first.address.slice(at + 1).toLowerCase() : undefined;
}
