import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

export interface TestCertificate {
  key: string;
  cert: string;
  ca: string;
}

const run = promisify(execFile);

// Generating keys costs tens of milliseconds per call; most tests ask for the same names.
const cache = new Map<string, Promise<TestCertificate>>();

/**
 * A leaf certificate for `names` (DNS names and IP addresses, all in subjectAltName, the
 * first also the CN) signed by a fresh test CA. `ca` is the CA certificate a client must
 * trust to verify the leaf.
 */
export function testCertificate(names: string[]): Promise<TestCertificate> {
  if (names.length === 0) throw new Error('testCertificate needs at least one name');
  for (const name of names) {
    // The names go into an openssl config line and a -subj argument.
    if (!/^[A-Za-z0-9.:*_-]+$/.test(name)) throw new Error(`testCertificate: unusable name ${JSON.stringify(name)}`);
  }
  const key = names.join(',');
  let pending = cache.get(key);
  if (!pending) {
    pending = generate(names);
    // A failure (openssl missing, a full disk) must not poison later attempts.
    pending.catch(() => cache.delete(key));
    cache.set(key, pending);
  }
  return pending;
}

async function generate(names: string[]): Promise<TestCertificate> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'hygiene-relay-cert-'));
  const file = (name: string): string => path.join(dir, name);
  try {
    // P-256 keys: far quicker to generate than RSA and accepted by every TLS stack under test.
    const ecKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    await run('openssl', [
      'req', '-x509', ...ecKey,
      '-keyout', file('ca.key'), '-out', file('ca.crt'),
      '-subj', '/CN=hygiene-relay test CA', '-days', '30',
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    await run('openssl', [
      'req', '-new', ...ecKey,
      '-keyout', file('leaf.key'), '-out', file('leaf.csr'),
      '-subj', `/CN=${names[0]}`,
    ]);
    // `x509 -req` does not copy extensions from the CSR, so they come from this file.
    const altNames = names.map((name) => (net.isIP(name) ? `IP:${name}` : `DNS:${name}`)).join(',');
    await writeFile(
      file('leaf.ext'),
      [
        `subjectAltName=${altNames}`,
        'basicConstraints=critical,CA:FALSE',
        'keyUsage=critical,digitalSignature,keyEncipherment',
        'extendedKeyUsage=serverAuth,clientAuth',
        '',
      ].join('\n'),
    );
    await run('openssl', [
      'x509', '-req', '-in', file('leaf.csr'),
      '-CA', file('ca.crt'), '-CAkey', file('ca.key'),
      // -CAcreateserial would leave a serial file to manage; a random serial is enough here.
      '-set_serial', `0x${randomBytes(16).toString('hex')}`,
      '-days', '30', '-extfile', file('leaf.ext'), '-out', file('leaf.crt'),
    ]);
    const [keyPem, certPem, caPem] = await Promise.all(
      ['leaf.key', 'leaf.crt', 'ca.crt'].map((name) => readFile(file(name), 'utf8')),
    );
    return { key: keyPem, cert: certPem, ca: caPem };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** A certificate for the relay's own listeners, written to a new directory as tls.crt and tls.key. */
export async function relayTlsFiles(): Promise<{ dir: string; ca: string; cert: string; key: string }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'relay-tls-'));
  const certificate = await testCertificate(['relay.test', '127.0.0.1']);
  const cert = path.join(dir, 'tls.crt');
  const key = path.join(dir, 'tls.key');
  writeFileSync(key, certificate.key);
  writeFileSync(cert, certificate.cert);
  return { dir, ca: certificate.ca, cert, key };
}
