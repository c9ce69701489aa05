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
 * first also the CN) signed by the process's one test CA. `ca` is that CA's certificate: a
 * client that trusts it verifies every leaf, so a test of certificate checks fails only on
 * the name, as a real MX with a certificate for another host would.
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

// P-256 keys: far quicker to generate than RSA and accepted by every TLS stack under test.
const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

let authority: Promise<{ key: string; cert: string }> | undefined;

/** The test CA: made once per process, on first use. */
function testAuthority(): Promise<{ key: string; cert: string }> {
  authority ??= inTempDir(async (file) => {
    await run('openssl', [
      'req', '-x509', ...EC_KEY,
      '-keyout', file('ca.key'), '-out', file('ca.crt'),
      '-subj', '/CN=hygiene-relay test CA', '-days', '30',
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    const [key, cert] = await Promise.all([readFile(file('ca.key'), 'utf8'), readFile(file('ca.crt'), 'utf8')]);
    return { key, cert };
  });
  authority.catch(() => (authority = undefined));
  return authority;
}

/** The test CA's certificate: what a client trusts to verify every testCertificate(). */
export async function testCa(): Promise<string> {
  return (await testAuthority()).cert;
}

async function inTempDir<T>(work: (file: (name: string) => string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'hygiene-relay-cert-'));
  try {
    return await work((name) => path.join(dir, name));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function generate(names: string[]): Promise<TestCertificate> {
  const ca = await testAuthority();
  return inTempDir(async (file) => {
    await Promise.all([writeFile(file('ca.key'), ca.key, { mode: 0o600 }), writeFile(file('ca.crt'), ca.cert)]);
    await run('openssl', [
      'req', '-new', ...EC_KEY,
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
    const [keyPem, certPem] = await Promise.all(['leaf.key', 'leaf.crt'].map((name) => readFile(file(name), 'utf8')));
    return { key: keyPem, cert: certPem, ca: ca.cert };
  });
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
