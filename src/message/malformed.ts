import { isUtf8 } from 'node:buffer';
import type { HeaderSection } from './header.ts';

/**
 * RFC 5322 §2.1.1 (and §3.5 for the body): a line is at most 998 octets without its CRLF,
 * RFC 5321 §4.5.3.1.6's 1000 with it.
 */
export const MAX_LINE = 998;

/**
 * What makes a message one the relay will not carry as it is, and where: a header field by
 * its name as written (`''` for a line of the header section that is no field, with its
 * line number), or the body.
 * - `nul`: a NUL octet. RFC 5322 excludes it from field bodies (§2.2: printable US-ASCII and
 *   WSP) and from body text (§3.5); RFC 2045 §2.7/§2.8 from 7bit and 8bit data, so neither
 *   BODY=7BIT nor BODY=8BITMIME (RFC 6152) carries one; only BINARYMIME (RFC 3030), which the
 *   relay does not offer, could.
 * - `long-line`: a line over `MAX_LINE` octets (`octets`: its length, known for header lines).
 * - `8bit`: octets beyond US-ASCII in a header field of a client that did not use SMTPUTF8:
 *   RFC 6532's UTF-8 header fields may travel only over SMTPUTF8 (RFC 6531).
 * - `invalid-utf8`: 8-bit octets under SMTPUTF8 that are not UTF-8 (RFC 6532 §3.2 extends
 *   the syntax with UTF-8 only).
 */
export interface Malformation {
  problem: 'nul' | 'long-line' | '8bit' | 'invalid-utf8';
  where: { field: string; line: number } | 'body';
  octets?: number;
}

// Line ends as LineEnds reads them (and the DATA encoder writes them): CRLF, a bare LF or a bare CR.
const LINE_END = /\r\n?|\n/;
const EIGHT_BIT = /[\x80-\xff]/;

/**
 * The first malformation of a header section (as `HeaderSection.parse` read it, one character
 * an octet), field by field in order; undefined when there is none. `smtputf8`: the client
 * used SMTPUTF8 on MAIL FROM.
 */
export function headerMalformation(header: HeaderSection, smtputf8: boolean): Malformation | undefined {
  let line = 1;
  for (const field of header.fields) {
    const where = { field: field.name, line };
    const lines = field.raw.split(LINE_END);
    // A field ends with its line end: the empty piece after it is no line.
    if (lines.at(-1) === '') lines.pop();
    line += lines.length;
    if (field.raw.includes('\0')) return { problem: 'nul', where };
    const longest = lines.reduce((max, l) => Math.max(max, l.length), 0);
    if (longest > MAX_LINE) return { problem: 'long-line', where, octets: longest };
    if (EIGHT_BIT.test(field.raw)) {
      if (!smtputf8) return { problem: '8bit', where };
      if (!isUtf8(Buffer.from(field.raw, 'latin1'))) return { problem: 'invalid-utf8', where };
    }
  }
  return undefined;
}

const CR = 0x0d;
const LF = 0x0a;

/**
 * Watches the body as it streams in (a message may be 50 MB and spooled to disk) for a NUL
 * and for a line over `MAX_LINE` octets, at the cost of one native search per chunk for the
 * NUL and, for the lines, two per 500 octets at most, whatever their length: from where a
 * line starts, the last line end within its first 999 octets is where the next line to look
 * at starts, and there is none there only when that line is too long.
 *
 * Long body lines are refused, not folded as Postfix's `smtp_line_length_limit` folds them:
 * the relay signs the body with DKIM, and a line broken by any MTA after it (Postfix does,
 * at 998) no longer matches the signature's body hash, so the message would fail DKIM and
 * DMARC at the receiver. Folding it here, before signing, would change the content (a line
 * of HTML or of a part without transfer encoding) where only the sending server knows how
 * to encode it properly: as quoted-printable or base64, which keeps lines short.
 */
export class BodyScan {
  /** Octets of the line still open at the end of the last chunk. */
  #open = 0;
  #found?: Malformation;

  /** The first malformation seen so far. */
  get malformation(): Malformation | undefined {
    return this.#found;
  }

  push(chunk: Buffer): void {
    if (this.#found) return;
    if (chunk.indexOf(0) >= 0) {
      this.#found = { problem: 'nul', where: 'body' };
      return;
    }
    // Where the open line starts, relative to this chunk: before it when it began in an earlier one.
    let start = -this.#open;
    for (;;) {
      // The open line's end is at `limit` at the latest; this chunk may end before that.
      const limit = start + MAX_LINE;
      const last = Math.min(limit, chunk.length - 1);
      const end = Math.max(chunk.lastIndexOf(LF, last), chunk.lastIndexOf(CR, last));
      if (end >= Math.max(start, 0)) {
        start = end + 1;
        continue;
      }
      if (limit < chunk.length) {
        this.#found = { problem: 'long-line', where: 'body' };
        return;
      }
      break;
    }
    this.#open = chunk.length - start;
  }
}
