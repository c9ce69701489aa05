/** One SMTP reply as a server sent it (RFC 5321 §4.2), possibly over several lines. */
export interface Reply {
  code: number;
  /** RFC 3463 enhanced status code (`5.1.1`) when the server gave one. */
  enhanced?: string;
  /** Text of each line, without the code and enhanced code. */
  lines: string[];
}

// RFC 5321 §4.2: reply text is printable US-ASCII. HT, which its textstring also allows, is
// escaped too, so that every octet a reply carries is one a terminal or a log shows as itself.
const UNPRINTABLE = /[^\x20-\x7e]/gu;
// The typography of the relay's own reply texts ("RFC 7208 §4.6.4", "<https://…>"), spelled in ASCII.
const SPELLED: Record<string, string> = { '§': 'section ', '…': '...', '→': '->', '—': '-', '–': '-', '‘': "'", '’': "'", '“': '"', '”': '"' };

/**
 * Text as a reply may carry it: the relay's own typography spelled in ASCII, and any other
 * character outside printable US-ASCII written as an escape, `\xNN` up to U+00FF (a raw octet,
 * as header bytes are read one character each) and `\u{N…}` beyond. Whatever a client or a
 * destination sent (a NUL, a CR LF that would start a reply of its own, 8-bit bytes) can then
 * reach a reply only as visible ASCII.
 */
export function printable(text: string): string {
  return text.replace(UNPRINTABLE, (c) => {
    const spelled = SPELLED[c];
    if (spelled !== undefined) return spelled;
    const point = c.codePointAt(0)!;
    const hex = point.toString(16).toUpperCase();
    return point <= 0xff ? `\\x${hex.padStart(2, '0')}` : `\\u{${hex}}`;
  });
}

/** `550 5.1.1 text…` on one line, as a log field or part of another reply. */
export function formatReply(reply: Reply): string {
  return [String(reply.code), reply.enhanced, reply.lines.join(' ')].filter(Boolean).join(' ');
}

/** A reply the parser could not accept; the connection is out of step and must be dropped. */
export class ReplySyntaxError extends Error {
  override name = 'ReplySyntaxError';
}

// Far above any real server's reply line (RFC 5321 §4.5.3.1.5 allows 512 octets) but bounded,
// so a hostile or broken peer cannot make the client buffer without limit.
export const MAX_REPLY_LINE = 2048;
export const MAX_REPLY_LINES = 100;

// RFC 5321 §4.2: three digits, then SP (last line), '-' (more lines follow) or nothing.
// 1yz is not used by SMTP and the second digit is 0-5 (§4.2.1), so anything else is noise.
const REPLY_LINE = /^([2-5][0-5][0-9])(?:([ -])(.*))?$/s;
// RFC 3463 §2 / RFC 2034 §4: class.subject.detail at the start of the text. The lookahead
// (rather than \b) keeps "5.1.1.2" or "2.0.0." from being read as a code.
const ENHANCED = /^([245])\.\d{1,3}\.\d{1,3}(?=\s|$)/;
const ENHANCED_PREFIX = /^[245]\.\d{1,3}\.\d{1,3}(?:\s+|$)/;

/**
 * Incremental reply reader: feed it socket chunks as they arrive, get complete replies back.
 * A line may be split across any number of chunks; a chunk may hold several replies.
 * After it throws once, it keeps throwing: the stream can no longer be trusted.
 */
export class ReplyParser {
  #partial: Buffer[] = [];
  #partialLength = 0;
  #code = 0;
  #texts: string[] = [];
  #broken: ReplySyntaxError | null = null;

  /** True while part of a line or of a multi-line reply is buffered. */
  get pending(): boolean {
    return this.#partialLength > 0 || this.#texts.length > 0;
  }

  push(chunk: Buffer): Reply[] {
    if (this.#broken) throw this.#broken;
    try {
      return this.#push(chunk);
    } catch (err) {
      if (err instanceof ReplySyntaxError) this.#broken = err;
      throw err;
    }
  }

  #push(chunk: Buffer): Reply[] {
    const replies: Reply[] = [];
    let start = 0;
    for (;;) {
      const lf = chunk.indexOf(0x0a, start);
      if (lf === -1) break;
      let line = chunk.subarray(start, lf);
      if (this.#partialLength > 0) {
        line = Buffer.concat([...this.#partial, line], this.#partialLength + line.length);
        this.#partial = [];
        this.#partialLength = 0;
      }
      start = lf + 1;
      // RFC 5321 §2.3.8 says CRLF; a bare LF is tolerated, as every MTA does.
      if (line.length > 0 && line[line.length - 1] === 0x0d) line = line.subarray(0, line.length - 1);
      const reply = this.#line(line);
      if (reply) replies.push(reply);
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      // +1: the CR of a CRLF split across chunks is not part of the line.
      if (this.#partialLength + rest.length > MAX_REPLY_LINE + 1) {
        throw new ReplySyntaxError(`reply line longer than ${MAX_REPLY_LINE} bytes`);
      }
      // Copy: the socket may reuse the chunk's memory once we return.
      this.#partial.push(Buffer.from(rest));
      this.#partialLength += rest.length;
    }
    return replies;
  }

  #line(raw: Buffer): Reply | null {
    if (raw.length > MAX_REPLY_LINE) throw new ReplySyntaxError(`reply line longer than ${MAX_REPLY_LINE} bytes`);
    // UTF-8: RFC 6531 servers may put it in reply text; anything else decodes lossily, harmlessly.
    const line = raw.toString('utf8');
    const match = REPLY_LINE.exec(line);
    if (!match) throw new ReplySyntaxError(`malformed reply line ${JSON.stringify(line.slice(0, 80))}`);
    const code = Number(match[1]);
    // RFC 5321 §4.2.1: every line of a multi-line reply carries the same code.
    if (this.#texts.length > 0 && code !== this.#code) {
      throw new ReplySyntaxError(`reply code changed from ${this.#code} to ${code} inside a multi-line reply`);
    }
    this.#code = code;
    this.#texts.push(match[3] ?? '');
    if (this.#texts.length > MAX_REPLY_LINES) throw new ReplySyntaxError(`reply longer than ${MAX_REPLY_LINES} lines`);
    if (match[2] === '-') return null;
    const reply = buildReply(code, this.#texts);
    this.#texts = [];
    return reply;
  }
}

function buildReply(code: number, texts: string[]): Reply {
  const enhanced = ENHANCED.exec(texts[0]);
  // RFC 3463 §2: classes 2/4/5 mirror the reply code's class. A mismatch is text that merely
  // looks like a code, and forwarding it as one would contradict the reply it came with.
  if (!enhanced || enhanced[1] !== String(code)[0]) return { code, lines: texts };
  // RFC 2034 §4 repeats the code on every line of a multi-line reply; none of it is text.
  return { code, enhanced: enhanced[0], lines: texts.map((text) => text.replace(ENHANCED_PREFIX, '')) };
}
