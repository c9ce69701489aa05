import type { ClientInfo } from './transaction.ts';

/** The header section of a message, up to the first empty line, as sent. */
export function rawHeaderSection(head: Buffer): string {
  const text = head.toString('latin1');
  const end = text.search(/\r?\n\r?\n/);
  return end < 0 ? text : text.slice(0, end);
}

/** The header section unfolded (RFC 5322 §2.2.3): one field per line. */
export function headerSection(head: Buffer): string {
  return rawHeaderSection(head).replace(/\r?\n[ \t]+/g, ' ');
}

/** First value of a header field, or undefined. */
export function headerValue(head: Buffer, name: string): string | undefined {
  const wanted = name.toLowerCase();
  for (const line of headerSection(head).split(/\r?\n/)) {
    const colon = line.indexOf(':');
    if (colon > 0 && line.slice(0, colon).trim().toLowerCase() === wanted) return line.slice(colon + 1).trim();
  }
  return undefined;
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
  const from = `${client.helo || 'unknown'} ([${client.address}])`;
  const forClause = options.recipients.length === 1 ? `\r\n\tfor <${options.recipients[0]}>` : '';
  return Buffer.from(`Received: from ${from}\r\n\tby ${options.by} (hygiene-relay) with ${protocol} id ${options.id}${forClause};\r\n\t${rfc5322Date()}\r\n`);
}
