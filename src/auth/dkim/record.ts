import type { Resolve } from '../../dns/index.ts';
import type { SigningKey } from './keys.ts';

/** The TXT record value that publishes a key (RFC 6376 §3.6.1; k=ed25519 from RFC 8463 §4). */
export function txtRecordValue(key: Pick<SigningKey, 'algorithm' | 'publicKey'>): string {
  return `v=DKIM1; k=${key.algorithm === 'ed25519-sha256' ? 'ed25519' : 'rsa'}; p=${key.publicKey}`;
}

/** A TXT record as a zone file line: character-strings of at most 255 bytes (RFC 1035 §3.3.14). */
export function txtZoneLine(name: string, value: string): string {
  const strings = value.match(/.{1,255}/g) ?? [''];
  return `${name}. IN TXT ${strings.map((s) => `"${s}"`).join(' ')}`;
}

/** The key record as a zone file line. */
export function zoneFileLine(domain: string, selector: string, value: string): string {
  return txtZoneLine(`${selector}._domainkey.${domain}`, value);
}

/**
 * Tags of a tag=value list, names lower-cased, whitespace removed from values: the syntax of
 * DKIM key records (RFC 6376 §3.2, §3.6.1), which DMARC (RFC 7489 §6.4), MTA-STS (RFC 8461
 * §3.1) and TLS-RPT (RFC 8460 §3) records share.
 */
export function parseTags(record: string): Map<string, string> {
  const tags = new Map<string, string>();
  for (const part of record.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    tags.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).replace(/\s+/g, ''));
  }
  return tags;
}

export type PublishedState = 'matches' | 'mismatch' | 'revoked' | 'missing' | 'unreadable';

/** What the DNS says of one configured key, and a sentence an admin can act on. */
export interface PublishedKey {
  key: SigningKey;
  name: string;
  state: PublishedState;
  detail: string;
}

/** Looks up `selector._domainkey.domain` and compares its p= with the configured private key. */
export async function checkPublished(key: SigningKey, resolve: Resolve): Promise<PublishedKey> {
  const name = `${key.selector}._domainkey.${key.domain}`;
  const expected = txtRecordValue(key);
  let records: string[][];
  try {
    records = await resolve(name, 'TXT');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTFOUND' || code === 'ENODATA') {
      return { key, name, state: 'missing', detail: `no TXT record at ${name}: publish ${expected}` };
    }
    return { key, name, state: 'unreadable', detail: `lookup of ${name} failed (${code}); try again` };
  }
  const dkim = records.map((chunks) => chunks.join('')).filter((text) => /^\s*v\s*=\s*DKIM1\b/i.test(text) || /\bp\s*=/.test(text));
  if (dkim.length === 0) return { key, name, state: 'missing', detail: `TXT at ${name} is not a DKIM key record: publish ${expected}` };
  const tags = parseTags(dkim[0]);
  const published = tags.get('p') ?? '';
  if (published === '') return { key, name, state: 'revoked', detail: `${name} publishes an empty p= (key revoked): publish ${expected}` };
  const type = tags.get('k') ?? 'rsa';
  const wantedType = key.algorithm === 'ed25519-sha256' ? 'ed25519' : 'rsa';
  if (published === key.publicKey && type === wantedType) return { key, name, state: 'matches', detail: 'published key matches the configured private key' };
  return { key, name, state: 'mismatch', detail: `${name} publishes a different key (k=${type}): replace it with ${expected}` };
}
