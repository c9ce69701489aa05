import { createHash, sign } from 'node:crypto';
import type { HeaderSection } from '../../message/index.ts';
import { Histogram, METRIC_PREFIX } from '../../observability/index.ts';
import { relaxedHeader } from './canonical.ts';
import type { DkimAlgorithm, SigningKey } from './keys.ts';
import { rsaSign } from './rsa-signer.ts';

/**
 * What a signature covers (RFC 6376 §5.4.1's list, plus RFC 8058's one-click unsubscribe
 * headers that Gmail and Yahoo require bulk senders to sign).
 */
export const SIGNED_HEADERS = [
  'from',
  'sender',
  'reply-to',
  'subject',
  'date',
  'message-id',
  'to',
  'cc',
  'in-reply-to',
  'references',
  'mime-version',
  'content-type',
  'content-transfer-encoding',
  'list-id',
  'list-unsubscribe',
  'list-unsubscribe-post',
];

const signSeconds = new Histogram({
  name: `${METRIC_PREFIX}dkim_sign_seconds`,
  help: 'Time to get one DKIM signature over the header, by algorithm (RSA computed on the signing thread, so waiting for it included; the body hash is done while DATA streams in)',
  labelNames: ['algorithm'],
  buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05],
});

/** What the transaction record says of a signature made. */
export interface Signature {
  d: string;
  s: string;
  a: DkimAlgorithm;
}

export { RelaxedBodyHash } from './body-hash.ts';

function fold(items: string[], separator: string, width = 72): string {
  const lines: string[] = [];
  let line = '';
  for (const item of items) {
    if (line && line.length + separator.length + item.length > width) {
      lines.push(line + separator);
      line = item;
    } else {
      line = line ? line + separator + item : item;
    }
  }
  return [...lines, line].join('\r\n\t');
}

/**
 * DKIM-Signature header fields for the message, one per key, relaxed/relaxed.
 *
 * Written here rather than with mailauth's dkimSign because that signer lists only the
 * header fields present: it cannot oversign From (name it once more in h= than it occurs,
 * RFC 6376 §8.15), which is what stops a second From being added after signing. It also
 * re-reads the whole message, where the body hash here is already done when DATA ends.
 */
export async function signHeaders(section: HeaderSection, bodyHash: string, keys: readonly SigningKey[], now = new Date()): Promise<{ header: Buffer; signatures: Signature[] }> {
  const names: string[] = [];
  let canonical = '';
  for (const name of SIGNED_HEADERS) {
    // RFC 6376 §5.4.2: several instances are signed from the last one upwards.
    for (const field of section.all(name).reverse()) {
      names.push(name);
      canonical += `${relaxedHeader(field.raw)}\r\n`;
    }
  }
  names.push('from');
  const timestamp = Math.floor(now.getTime() / 1000);
  let header = '';
  const signatures: Signature[] = [];
  for (const key of keys) {
    const unsigned =
      `DKIM-Signature: v=1; a=${key.algorithm}; c=relaxed/relaxed; d=${key.domain};\r\n\ts=${key.selector}; t=${timestamp};\r\n\t` +
      `h=${fold(names, ':')};\r\n\tbh=${bodyHash};\r\n\tb=`;
    // RFC 6376 §3.7: the signature header itself, b= empty, canonicalized, without its CRLF.
    const data = Buffer.from(canonical + relaxedHeader(unsigned), 'latin1');
    const end = signSeconds.startTimer({ algorithm: key.algorithm });
    const value =
      key.algorithm === 'ed25519-sha256'
        ? sign(null, createHash('sha256').update(data).digest(), key.privateKey) // RFC 8463 §3: Ed25519 over the SHA-256 hash
        : await rsaSign(data, key.privateKey);
    end();
    header += `${unsigned}${fold(value.toString('base64').match(/.{1,72}/g) ?? [], '')}\r\n`;
    signatures.push({ d: key.domain, s: key.selector, a: key.algorithm });
  }
  return { header: Buffer.from(header, 'latin1'), signatures };
}
