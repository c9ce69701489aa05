import { createHash, type Hash } from 'node:crypto';
import { LineEnds } from '../../message/index.ts';

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
 * of garbage per large message); only a chunk with bare CR or LF is copied, by `LineEnds`,
 * which reads line ends as the upstream session writes them: after it every line ends in
 * CRLF, so a line ends at its LF.
 */
export class RelaxedBodyHash {
  #hash: Hash = createHash('sha256');
  #lines = new LineEnds();
  /** Line breaks seen since the last content: written only if more content follows. */
  #pendingBreaks = 0;
  /** Whitespace seen in the line since the last content: one SP if content follows. */
  #pendingSpace = false;
  #lineHasContent = false;
  #anyContent = false;

  update(chunk: Buffer): void {
    this.#update(this.#lines.push(chunk));
  }

  #update(chunk: Buffer): void {
    let run = -1;
    const flush = (end: number) => {
      if (run >= 0 && end > run) this.#hash.update(chunk.subarray(run, end));
      run = -1;
    };
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i];
      if (b === CR) {
        // The start of a CRLF: the line ends at its LF, here or at the start of the next chunk.
        flush(i);
      } else if (b === LF) {
        flush(i);
        this.#pendingSpace = false;
        this.#lineHasContent = false;
        this.#pendingBreaks++;
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
    this.#update(this.#lines.end());
    if (this.#anyContent && (this.#lineHasContent || this.#pendingBreaks > 0)) this.#hash.update(CRLF);
    return this.#hash.digest('base64');
  }
}
