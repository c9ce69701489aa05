import { createHash, type Hash } from 'node:crypto';

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const HT = 0x09;
const CRLF = Buffer.from('\r\n');
const SPACE = Buffer.from(' ');

/**
 * SHA-256 of the body under relaxed canonicalization (RFC 6376 §3.4.4), fed chunk by chunk
 * while DATA streams in. Runs of ordinary bytes are hashed in place, so a 20 MB body costs
 * no copies (mailauth's RelaxedHash allocates a buffer per line, which showed as tens of MB
 * of garbage per large message). Line ends are read the way the upstream session writes
 * them: CRLF, bare LF and bare CR each end a line (RFC 5321 §2.3.8).
 */
export class RelaxedBodyHash {
  #hash: Hash = createHash('sha256');
  /** Line breaks seen since the last content: written only if more content follows. */
  #pendingBreaks = 0;
  /** Whitespace seen in the line since the last content: one SP if content follows. */
  #pendingSpace = false;
  #lineHasContent = false;
  #anyContent = false;
  /** The previous chunk ended in CR: an LF starting this one belongs to it. */
  #afterCR = false;

  update(chunk: Buffer): void {
    let run = -1;
    const flush = (end: number) => {
      if (run >= 0 && end > run) this.#hash.update(chunk.subarray(run, end));
      run = -1;
    };
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i];
      if (this.#afterCR) {
        this.#afterCR = false;
        if (b === LF) continue;
      }
      if (b === CR || b === LF) {
        flush(i);
        this.#pendingSpace = false;
        this.#lineHasContent = false;
        this.#pendingBreaks++;
        this.#afterCR = b === CR;
      } else if (b === SP || b === HT) {
        flush(i);
        this.#pendingSpace = true;
      } else if (run < 0) {
        for (; this.#pendingBreaks > 0; this.#pendingBreaks--) this.#hash.update(CRLF);
        if (this.#pendingSpace) this.#hash.update(SPACE);
        this.#pendingSpace = false;
        this.#lineHasContent = true;
        this.#anyContent = true;
        run = i;
      }
    }
    flush(chunk.length);
  }

  /** Base64 of the hash; an unterminated last line gets its CRLF, trailing empty lines none. */
  digest(): string {
    if (this.#anyContent && (this.#lineHasContent || this.#pendingBreaks > 0)) this.#hash.update(CRLF);
    return this.#hash.digest('base64');
  }
}
