import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { publicKeyRecord } from './keys.ts';
import { txtRecordValue, zoneFileLine } from './record.ts';

export interface GeneratedKey {
  file: string;
  txtRecord: string;
  yaml: string;
}

/** A new key written with mode 0600, with the TXT record to publish and the YAML to paste. */
export function generateDkimKey(options: { domain: string; selector: string; type: 'rsa' | 'ed25519'; bits: number; out: string }): GeneratedKey {
  const { privateKey } =
    options.type === 'rsa' ? generateKeyPairSync('rsa', { modulusLength: options.bits }) : generateKeyPairSync('ed25519');
  mkdirSync(options.out, { recursive: true, mode: 0o700 });
  const file = path.resolve(options.out, `${options.domain}.${options.selector}.pem`);
  // wx: never overwrite a key that may already be published.
  writeFileSync(file, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
  const algorithm = options.type === 'rsa' ? 'rsa-sha256' : 'ed25519-sha256';
  const txtRecord = zoneFileLine(options.domain, options.selector, txtRecordValue({ algorithm, publicKey: publicKeyRecord(privateKey) }));
  const yaml = stringify({ domains: { [options.domain]: { dkim: [{ selector: options.selector, key: file }] } } });
  return { file, txtRecord, yaml };
}
