import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { exposedKeyWarning, readKeyFile, type Config } from '../../config/index.ts';

export type DkimAlgorithm = 'rsa-sha256' | 'ed25519-sha256';

/** One configured DKIM key, loaded and checked. */
export interface SigningKey {
  domain: string;
  selector: string;
  algorithm: DkimAlgorithm;
  privateKey: KeyObject;
  /** RSA modulus length; undefined for Ed25519. */
  bits?: number;
  /** Loaded and checked, published TXT verified by `dkim check`, but not used to sign. */
  standby: boolean;
  /** The file it came from, or "inline". */
  source: string;
  /** The p= value of the TXT record that publishes this key (RFC 6376 §3.6.1, RFC 8463 §4). */
  publicKey: string;
}

/** "rsa-sha256 2048 bits, active": what a key is, as every command that lists keys says it. */
export function keyKind(key: SigningKey): string {
  return `${key.algorithm}${key.bits ? ` ${key.bits} bits` : ''}, ${key.standby ? 'standby' : 'active'}`;
}

/** A key that cannot be used; the message names the domain, the selector and the file. */
export class DkimKeyError extends Error {
  override name = 'DkimKeyError';
}

// RFC 8301 §3.2: verifiers may refuse RSA keys under 1024 bits; above 4096 many fail to verify.
const MIN_RSA_BITS = 1024;
const MAX_RSA_BITS = 4096;
const RECOMMENDED_RSA_BITS = 2048;

/** The p= value for a private key: SubjectPublicKeyInfo for RSA, the raw 32 bytes for Ed25519. */
export function publicKeyRecord(privateKey: KeyObject): string {
  const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  return (privateKey.asymmetricKeyType === 'ed25519' ? spki.subarray(spki.length - 32) : spki).toString('base64');
}

/** Loads one key; what works but should be fixed (a key file others can read) goes to `warnings`. */
function loadKey(domain: string, entry: NonNullable<Config['domains'][string]['dkim']>[number], warnings: string[]): SigningKey {
  const inline = entry.key.includes('-----BEGIN');
  const source = inline ? 'inline' : entry.key;
  const where = `domains.${domain}.dkim selector ${entry.selector} (${source})`;
  let pem: string | Buffer;
  if (inline) {
    pem = entry.key;
  } else {
    let file;
    try {
      file = readKeyFile(entry.key);
    } catch (err) {
      throw new DkimKeyError(`${where}: cannot read key file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    pem = file.data;
    const exposed = exposedKeyWarning(entry.key, file.mode);
    if (exposed) warnings.push(`${domain} selector ${entry.selector}: ${exposed}`);
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(pem);
  } catch (err) {
    throw new DkimKeyError(`${where}: not a PEM private key (${(err as Error).message})`);
  }
  const type = privateKey.asymmetricKeyType;
  let algorithm: DkimAlgorithm;
  let bits: number | undefined;
  if (type === 'rsa') {
    algorithm = 'rsa-sha256';
    bits = privateKey.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS || bits > MAX_RSA_BITS) {
      throw new DkimKeyError(`${where}: RSA key of ${bits} bits; use ${MIN_RSA_BITS} to ${MAX_RSA_BITS} (2048 recommended)`);
    }
  } else if (type === 'ed25519') {
    algorithm = 'ed25519-sha256';
  } else {
    throw new DkimKeyError(`${where}: ${type} keys cannot sign DKIM; use RSA or Ed25519`);
  }
  if (entry.algorithm && entry.algorithm !== algorithm) {
    throw new DkimKeyError(`${where}: algorithm ${entry.algorithm} configured, but the key is ${type}`);
  }
  return { domain, selector: entry.selector, algorithm, privateKey, bits, standby: entry.standby, source, publicKey: publicKeyRecord(privateKey) };
}

/** Something to fix about keys that work: of one key (`selector`), or of the domain's keys together. */
export interface KeyAdvice {
  selector?: string;
  text: string;
}

/** What an admin should change about one domain's keys: RSA under 2048 bits, Ed25519 alone. */
export function keyAdvice(domain: string, keys: readonly SigningKey[]): KeyAdvice[] {
  const advice: KeyAdvice[] = [];
  for (const key of keys) {
    if (key.bits && key.bits < RECOMMENDED_RSA_BITS) {
      advice.push({ selector: key.selector, text: `${domain} selector ${key.selector}: RSA key of ${key.bits} bits; 2048 is recommended (Gmail, Microsoft)` });
    }
  }
  const active = keys.filter((key) => !key.standby);
  if (active.length && active.every((key) => key.algorithm === 'ed25519-sha256')) {
    advice.push({ text: `${domain}: signed with Ed25519 only; Gmail reports Ed25519 signatures as dkim=fail, so add an RSA key (dual signing)` });
  }
  return advice;
}

/** The DKIM keys of every configured domain, loaded and checked at once. */
export class KeyRing {
  readonly keys: readonly SigningKey[];
  /** What an admin should fix although the keys work, one sentence each. */
  readonly warnings: readonly string[];
  #domains: Config['domains'];

  private constructor(domains: Config['domains'], keys: SigningKey[], warnings: string[]) {
    this.#domains = domains;
    this.keys = keys;
    this.warnings = warnings;
  }

  /** Loads every key; the first that cannot be used throws a DkimKeyError. */
  static load(domains: Config['domains']): KeyRing {
    const keys: SigningKey[] = [];
    const warnings: string[] = [];
    for (const [domain, settings] of Object.entries(domains)) {
      const loaded = settings.dkim.map((entry) => loadKey(domain, entry, warnings));
      warnings.push(...keyAdvice(domain, loaded).map((advice) => advice.text));
      keys.push(...loaded);
    }
    return new KeyRing(domains, keys, warnings);
  }

  /**
   * The active keys for mail whose RFC 5322 From is in `authorDomain`: the domain's own, or
   * those of a parent domain configured with `subdomains: true` (d= stays the parent, which
   * relaxed DMARC alignment accepts, RFC 7489 §3.1.1).
   */
  forAuthor(authorDomain: string): SigningKey[] {
    const labels = authorDomain.toLowerCase().split('.');
    for (let i = 0; i < labels.length - 1; i++) {
      const candidate = labels.slice(i).join('.');
      const settings = this.#domains[candidate];
      if (!settings || (i > 0 && !settings.subdomains)) continue;
      return this.keys.filter((key) => key.domain === candidate && !key.standby);
    }
    return [];
  }
}
