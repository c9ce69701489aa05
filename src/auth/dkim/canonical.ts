/**
 * RFC 6376 §3.4.2 relaxed header canonicalization of one field as it arrived (a
 * `HeaderField`'s raw text): name lower-cased, unfolded, runs of whitespace as one space,
 * none at the end of the value or around the colon. The line end closing the field is not
 * part of the result: the signer writes CRLF after each field.
 */
export function relaxedHeader(raw: string): string {
  const colon = raw.indexOf(':');
  const name = raw.slice(0, colon).trim().toLowerCase();
  const value = raw
    .slice(colon + 1)
    .replace(/\r?\n$/, '')
    .replace(/\r?\n(?=[ \t])/g, '')
    .replace(/[ \t]+/g, ' ')
    // Only SP and HTAB are WSP: String#trim would also eat a latin1 0xA0 byte.
    .replace(/^ | $/g, '');
  return `${name}:${value}`;
}
