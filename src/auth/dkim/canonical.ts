/** One header field as it appears in the message (RFC 5322 §2.2), continuation lines included. */
export interface HeaderField {
  /** Lower-cased field name. */
  name: string;
  /** The whole field, name to the end of its last line, without the final line break. */
  raw: string;
}

/** Splits a header section into fields; line ends may be CRLF or bare LF. */
export function parseHeaderFields(section: Buffer): HeaderField[] {
  const fields: HeaderField[] = [];
  for (const line of section.toString('latin1').split(/\r?\n/)) {
    if (line === '') continue;
    if ((line[0] === ' ' || line[0] === '\t') && fields.length) {
      fields[fields.length - 1].raw += `\r\n${line}`;
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    fields.push({ name: line.slice(0, colon).trim().toLowerCase(), raw: line });
  }
  return fields;
}

/**
 * RFC 6376 §3.4.2 relaxed header canonicalization: name lower-cased, unfolded, runs of
 * whitespace as one space, none at the end of the value or around the colon.
 */
export function relaxedHeader(raw: string): string {
  const colon = raw.indexOf(':');
  const name = raw.slice(0, colon).trim().toLowerCase();
  const value = raw
    .slice(colon + 1)
    .replace(/\r?\n(?=[ \t])/g, '')
    .replace(/[ \t]+/g, ' ')
    // Only SP and HTAB are WSP: String#trim would also eat a latin1 0xA0 byte.
    .replace(/^ | $/g, '');
  return `${name}:${value}`;
}
