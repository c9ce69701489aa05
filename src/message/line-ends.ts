const CR = 0x0d;
const LF = 0x0a;
const CRLF = Buffer.from('\r\n');
const LF_ONLY = Buffer.from('\n');
const NOTHING = Buffer.alloc(0);

/**
 * The relay's one reading of line ends in a message. RFC 5322 §2.1 ends every line in CRLF
 * and RFC 5321 §2.3.8 forbids a bare CR or a bare LF in mail data, but clients send them: a
 * CRLF, a bare LF and a bare CR each end one line, and each is written as CRLF. The DATA
 * encoder sends what this gives, and the body hash hashes the same, so the signature covers
 * the body as it arrives.
 *
 * Fed chunk by chunk: a CR that ends a chunk is passed on at once, and whether it was bare
 * is known only from the next chunk's first byte (then its LF is added there) or at `end()`.
 */
export class LineEnds {
  /** The last chunk ended in CR: an LF starting the next one completes it. */
  #afterCR = false;

  /** The chunk with every line end as CRLF; the chunk itself when it needed nothing, so the common case copies nothing. */
  push(chunk: Buffer): Buffer {
    if (chunk.length === 0) return chunk;
    let parts: Buffer[] | undefined;
    let start = 0;
    let from = 0;
    if (this.#afterCR) {
      this.#afterCR = false;
      if (chunk[0] === LF) from = 1;
      else parts = [LF_ONLY];
    }
    // indexOf runs natively; each position is searched for once, so lines of bare LF cost no rescans.
    let cr = chunk.indexOf(CR, from);
    let lf = chunk.indexOf(LF, from);
    while (cr >= 0 || lf >= 0) {
      if (lf >= 0 && (cr < 0 || lf < cr)) {
        // No CR right before it (that CR would have come first): a bare LF.
        (parts ??= []).push(chunk.subarray(start, lf), CRLF);
        start = lf + 1;
        lf = chunk.indexOf(LF, lf + 1);
        continue;
      }
      if (cr === chunk.length - 1) {
        this.#afterCR = true;
        break;
      }
      if (chunk[cr + 1] === LF) {
        lf = chunk.indexOf(LF, cr + 2);
      } else {
        (parts ??= []).push(chunk.subarray(start, cr + 1), LF_ONLY);
        start = cr + 1;
      }
      cr = chunk.indexOf(CR, cr + 1);
    }
    if (!parts) return chunk;
    if (start < chunk.length) parts.push(chunk.subarray(start));
    return Buffer.concat(parts);
  }

  /** The LF that a bare CR ending the last chunk still lacks, or nothing. */
  end(): Buffer {
    if (!this.#afterCR) return NOTHING;
    this.#afterCR = false;
    return LF_ONLY;
  }
}
