import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { publicKeyRecord, txtRecordValue } from '../../src/auth/index.ts';
import type { DnsServer } from './dns-server.ts';

export interface TestKey {
  domain: string;
  selector: string;
  file: string;
  /** The TXT record value that publishes it. */
  record: string;
}

/** A fresh key written to `dir`; published in `dns` unless `publish` is false. */
export function makeKey(dir: string, domain: string, selector: string, type: 'rsa' | 'ed25519', options: { dns?: DnsServer; bits?: number } = {}): TestKey {
  const { privateKey } = type === 'rsa' ? generateKeyPairSync('rsa', { modulusLength: options.bits ?? 2048 }) : generateKeyPairSync('ed25519');
  const file = path.join(dir, `${domain}.${selector}.pem`);
  writeFileSync(file, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const record = txtRecordValue({ algorithm: type === 'rsa' ? 'rsa-sha256' : 'ed25519-sha256', publicKey: publicKeyRecord(privateKey) });
  options.dns?.add(`${selector}._domainkey.${domain}`, { type: 'TXT', data: record });
  return { domain, selector, file, record };
}

const VERIFIER = path.resolve(import.meta.dirname, 'dkimverify.py');

/**
 * Verifies a message with dkimpy (Debian's python3-dkim), an implementation independent of
 * mailauth; `keys` are the TXT records it may look up.
 */
export function dkimpyVerify(message: Buffer, keys: TestKey[]): Promise<{ ok: boolean; output: string }> {
  const records = Object.fromEntries(keys.map((key) => [`${key.selector}._domainkey.${key.domain}`, key.record]));
  return new Promise((resolve) => {
    const child = execFile('/usr/bin/python3', [VERIFIER, JSON.stringify(records)], (err, stdout, stderr) => {
      resolve({ ok: !err, output: stdout + stderr });
    });
    child.stdin!.end(message);
  });
}
