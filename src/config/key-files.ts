import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { ConfigError } from './error.ts';

/** A private key file's bytes and permission bits, read through one descriptor so both are of the same file. */
export function readKeyFile(file: string): { data: Buffer; mode: number } {
  const fd = openSync(file, 'r');
  try {
    return { mode: fstatSync(fd).mode & 0o7777, data: readFileSync(fd) };
  } finally {
    closeSync(fd);
  }
}

/** Four octal digits, as chmod and ls -l users read them. */
function octal(mode: number): string {
  return mode.toString(8).padStart(4, '0');
}

/** One sentence when group or others may open a private key: a key others can read may already be copied. */
export function exposedKeyWarning(file: string, mode: number): string | undefined {
  if ((mode & 0o077) === 0) return undefined;
  return `private key ${file} has mode ${octal(mode & 0o777)}, readable by group or others: chmod 600 ${file} (owned by the relay's user)`;
}

/** The listeners' certificate and key, ready for the TLS server, and what the admin should fix although they work. */
export interface TlsFiles {
  credentials: { key: Buffer; cert: Buffer };
  certificate: X509Certificate;
  warnings: string[];
}

function code(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? (err as Error).message;
}

/**
 * Reads `tls.cert` and `tls.key` and checks that they are a certificate and its private key,
 * so a wrong file is one line naming the key path (ConfigError) instead of an OpenSSL error
 * from the TLS server, or a failed handshake once the relay runs.
 */
export function readTlsFiles(tls: { cert: string; key: string }): TlsFiles {
  let key: { data: Buffer; mode: number };
  let cert: Buffer;
  try {
    key = readKeyFile(tls.key);
  } catch (err) {
    throw new ConfigError(`tls.key: cannot read ${tls.key} (${code(err)})`);
  }
  try {
    cert = readFileSync(tls.cert);
  } catch (err) {
    throw new ConfigError(`tls.cert: cannot read ${tls.cert} (${code(err)})`);
  }
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(cert);
  } catch (err) {
    throw new ConfigError(`tls.cert: ${tls.cert} is not a PEM certificate (${(err as Error).message})`);
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key.data);
  } catch (err) {
    throw new ConfigError(`tls.key: ${tls.key} is not an unencrypted PEM private key (${(err as Error).message})`);
  }
  if (!certificate.checkPrivateKey(privateKey)) {
    throw new ConfigError(`tls.key: ${tls.key} is not the private key of the certificate in ${tls.cert}`);
  }
  const warnings: string[] = [];
  const exposed = exposedKeyWarning(tls.key, key.mode);
  if (exposed) warnings.push(`tls.key: ${exposed}`);
  if (certificate.validToDate.getTime() < Date.now()) {
    warnings.push(`tls.cert: the certificate in ${tls.cert} expired on ${certificate.validToDate.toISOString()}: clients that verify it will refuse STARTTLS`);
  }
  return { credentials: { key: key.data, cert }, certificate, warnings };
}
