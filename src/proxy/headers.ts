import { createHash } from 'node:crypto';
import addressparser from 'nodemailer/lib/addressparser';
import { canonicalAddress } from '../ip/index.ts';
import type { ClientInfo } from './context.ts';

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

/**
 * Finds where the header section ends (the first empty line, RFC 5322 §2.1) while the
 * message streams in; keeps the header bytes and hands every body byte to `onBody`.
 */
export class HeaderSplitter {
  #held: Buffer = Buffer.alloc(0);
  #header?: Buffer;
  #onBody: (chunk: Buffer) => void;
  #limit: number;

  constructor(onBody: (chunk: Buffer) => void, limit = 1024 * 1024) {
    this.#onBody = onBody;
    this.#limit = limit;
  }

  /** The header section, up to and including the line break of its last field. */
  get header(): Buffer {
    return this.#header ?? this.#held;
  }

  /** The header section grew past the limit without ending. */
  get overflow(): boolean {
    return this.#header === undefined && this.#held.length > this.#limit;
  }

  push(chunk: Buffer): void {
    if (this.#header) {
      this.#onBody(chunk);
      return;
    }
    if (this.overflow) return;
    const from = Math.max(0, this.#held.length - 3);
    this.#held = this.#held.length ? Buffer.concat([this.#held, chunk]) : chunk;
    const end = this.#boundary(from);
    if (end === undefined) return;
    this.#header = this.#held.subarray(0, end.header);
    const body = this.#held.subarray(end.body);
    this.#held = Buffer.alloc(0);
    if (body.length) this.#onBody(body);
  }

  #boundary(from: number): { header: number; body: number } | undefined {
    const held = this.#held;
    // A message that starts with an empty line has no header fields at all.
    if (from === 0 && held[0] === 0x0a) return { header: 0, body: 1 };
    if (from === 0 && held[0] === 0x0d && held[1] === 0x0a) return { header: 0, body: 2 };
    for (let i = held.indexOf(0x0a, from); i >= 0; i = held.indexOf(0x0a, i + 1)) {
      if (held[i + 1] === 0x0a) return { header: i + 1, body: i + 2 };
      if (held[i + 1] === 0x0d && held[i + 2] === 0x0a) return { header: i + 1, body: i + 3 };
    }
    return undefined;
  }
}

/** Addresses of the From header fields (one entry per From field found). */
export function fromFields(header: Buffer): string[] {
  return headerSection(header)
    .split(/\r?\n/)
    .filter((line) => /^from\s*:/i.test(line))
    .map((line) => line.slice(line.indexOf(':') + 1).trim());
}

/** The domain of the first address of the first From field: whose DKIM key signs the message. */
export function authorDomain(header: Buffer): string | undefined {
  const [from] = fromFields(header);
  if (from === undefined) return undefined;
  const first = addressparser(from, { flatten: true })[0];
  const at = first?.address.lastIndexOf('@') ?? -1;
  return at > 0 ? first.address.slice(at + 1).toLowerCase() : undefined;
}

/** Header fields by name, as raw lines with their continuations: for removing some. */
export function withoutFields(header: Buffer, name: string): Buffer {
  const lines = header.toString('latin1').split(/(?<=\n)/);
  const wanted = name.toLowerCase();
  let dropping = false;
  const kept = lines.filter((line) => {
    if (line[0] === ' ' || line[0] === '\t') return !dropping;
    const colon = line.indexOf(':');
    dropping = colon > 0 && line.slice(0, colon).trim().toLowerCase() === wanted;
    return !dropping;
  });
  return Buffer.from(kept.join(''), 'latin1');
}

/** The header section with fields appended at its end, each ending in CRLF. */
export function withFields(header: Buffer, fields: string[]): Buffer {
  if (fields.length === 0) return header;
  const ends = header.length === 0 || header[header.length - 1] === 0x0a;
  return Buffer.concat([header, Buffer.from(`${ends ? '' : '\r\n'}${fields.map((f) => `${f}\r\n`).join('')}`, 'latin1')]);
}
