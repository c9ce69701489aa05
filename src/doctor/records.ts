import { isTemporaryDnsError, type Resolve } from '../dns/index.ts';

/**
 * The TXT records at `name` that start with `prefix` (each record's strings joined, RFC 7208
 * §3.3): none for NXDOMAIN or NODATA, or the error code of a lookup that failed for now.
 */
export async function txtRecords(name: string, prefix: RegExp, resolve: Resolve): Promise<string[] | { failed: string }> {
  try {
    return (await resolve(name, 'TXT')).map((chunks) => chunks.join('')).filter((text) => prefix.test(text));
  } catch (err) {
    if (isTemporaryDnsError(err)) return { failed: (err as NodeJS.ErrnoException).code ?? 'error' };
    return [];
  }
}

/** A tag=value record (DMARC, RFC 7489 §6.4) with `tag` set to `value`: replaced in place, or added at the end. */
export function withTag(record: string, tag: string, value: string): string {
  const parts = record.split(';').map((part) => part.trim()).filter(Boolean);
  const index = parts.findIndex((part) => part.slice(0, part.indexOf('=')).trim().toLowerCase() === tag);
  if (index >= 0) parts[index] = `${tag}=${value}`;
  else parts.push(`${tag}=${value}`);
  return parts.join('; ');
}
