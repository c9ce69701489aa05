import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse, stringify } from 'yaml';
import { KeyRing } from '../src/auth/index.ts';
import { parseConfig } from '../src/config/index.ts';
import { makeKey } from './harness/dkim.ts';
import { RelayProcess, runCli } from './harness/process.ts';
import { send } from './harness/send.ts';
import { Internet, message, World } from './harness/world.ts';

describe('DKIM keys: checks at start, keygen, check', () => {
  let dir: string;
  let internet: Internet;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-keys-'));
    internet = await Internet.start();
  });
  after(async () => {
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function configWith(name: string, dkim: unknown[]): string {
    const file = path.join(dir, `${name}.yaml`);
    writeFileSync(file, stringify(internet.relayConfig({ domains: { 'example.test': { dkim } } })));
    return file;
  }

  const malformed = () => {
    const file = path.join(dir, 'malformed.pem');
    writeFileSync(file, '-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n');
    return file;
  };
  const ecKey = () => {
    const file = path.join(dir, 'ec.pem');
    writeFileSync(file, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
    return file;
  };
  const cases: [string, () => unknown, RegExp][] = [
    ['a malformed key file', () => ({ selector: 'bad', key: malformed() }), /domains\.example\.test\.dkim selector bad \(.*malformed\.pem\): not a PEM private key/],
    ['a key of the wrong type', () => ({ selector: 'ec', key: ecKey() }), /selector ec \(.*ec\.pem\): ec keys cannot sign DKIM; use RSA or Ed25519/],
    ['a missing file', () => ({ selector: 'gone', key: path.join(dir, 'nowhere.pem') }), /selector gone \(.*nowhere\.pem\): cannot read key file: ENOENT/],
    ['an algorithm the key does not have', () => ({ selector: 'mismatch', key: makeKey(dir, 'example.test', 'mismatch', 'ed25519').file, algorithm: 'rsa-sha256' }), /selector mismatch .*: algorithm rsa-sha256 configured, but the key is ed25519/],
    ['an RSA key under 1024 bits', () => ({ selector: 'tiny', key: makeKey(dir, 'example.test', 'tiny', 'rsa', { bits: 768 }).file }), /selector tiny .*: RSA key of 768 bits; use 1024 to 4096/],
  ];
  for (const [name, entry, expected] of cases) {
    it(`refuses to start with ${name}, in one line naming domain, selector and file`, async () => {
      const result = await runCli(['start', '--config', configWith(name.replace(/\W+/g, '-'), [entry()])]);
      assert.equal(result.code, 2);
      assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
      assert.match(result.stderr, expected);
    });
  }

  it('warns about an RSA key under 2048 bits and about a domain signed with Ed25519 only', () => {
    const small = makeKey(dir, 'example.test', 'small', 'rsa', { bits: 1024 });
    const edOnly = makeKey(dir, 'ed-only.test', 'ed', 'ed25519');
    const config = parseConfig({
      egress: [{ ip: '127.0.0.2' }],
      domains: { 'example.test': { dkim: [{ selector: 'small', key: small.file }] }, 'ed-only.test': { dkim: [{ selector: 'ed', key: edOnly.file }] } },
    });
    assert.deepEqual(KeyRing.load(config.domains).warnings, [
      'example.test selector small: RSA key of 1024 bits; 2048 is recommended (Gmail, Microsoft)',
      'ed-only.test: signed with Ed25519 only; Gmail reports Ed25519 signatures as dkim=fail, so add an RSA key (dual signing)',
    ]);
  });

  it('`dkim keygen` writes a 0600 key and prints the TXT record and YAML that make a message pass', async () => {
    const out = path.join(dir, 'generated');
    const result = await runCli(['dkim', 'keygen', '--domain', 'example.test', '--selector', 'gen1', '--out', out]);
    assert.equal(result.code, 0, result.stderr);
    const file = path.join(out, 'example.test.gen1.pem');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const txt = /^gen1\._domainkey\.example\.test\. IN TXT ((?:"[^"]{1,255}" ?)+)$/m.exec(result.stdout);
    assert.ok(txt, result.stdout);
    const strings = [...txt[1].matchAll(/"([^"]*)"/g)].map((m) => m[1]);
    assert.ok(strings.length >= 2, 'a 2048-bit key needs more than one 255-byte string');
    const yaml = parse(result.stdout.split('# add this to the relay\'s configuration:\n')[1]) as { domains: Record<string, unknown> };

    const world = await World.start({ destinations: [{ domain: 'gmail.test', mx: [{ name: 'mx.gmail.test', ip: '127.0.0.10' }] }], config: { domains: yaml.domains } });
    try {
      world.dns.add('gen1._domainkey.example.test', { type: 'TXT', data: strings });
      const sent = await send(world.port, 'alice@example.test', ['bob@gmail.test'], message());
      assert.equal(sent.data?.code, 250);
      const [received] = await world.destination('gmail.test').waitForMessages(1);
      assert.deepEqual(received.verdict!.dkim, ['pass']);
    } finally {
      await world.close();
    }
  });

  it('`dkim check` compares every configured key, standby ones too, with what DNS publishes', async () => {
    const good = makeKey(dir, 'example.test', 'good', 'rsa', { dns: internet.dns });
    const next = makeKey(dir, 'example.test', 'next', 'ed25519', { dns: internet.dns });
    const unpublished = makeKey(dir, 'example.test', 'unpublished', 'rsa');
    const stale = makeKey(dir, 'example.test', 'stale', 'rsa');
    internet.dns.add('stale._domainkey.example.test', { type: 'TXT', data: good.record });
    const file = configWith('check', [
      { selector: 'good', key: good.file },
      { selector: 'next', key: next.file, standby: true },
      { selector: 'unpublished', key: unpublished.file },
      { selector: 'stale', key: stale.file },
    ]);
    const result = await runCli(['dkim', 'check', '--config', file]);
    assert.equal(result.code, 1);
    assert.match(result.stdout, /^OK   example\.test selector good \(rsa-sha256 2048 bits, active\): published key matches/m);
    assert.match(result.stdout, /^OK   example\.test selector next \(ed25519-sha256, standby\): published key matches/m);
    assert.match(result.stdout, /^FAIL example\.test selector unpublished .*: no TXT record at unpublished\._domainkey\.example\.test: publish v=DKIM1; k=rsa; p=/m);
    assert.match(result.stdout, /^FAIL example\.test selector stale .*: stale\._domainkey\.example\.test publishes a different key/m);
  });
});

describe('key rotation with SIGHUP', () => {
  let dir: string;
  let internet: Internet;
  let relay: RelayProcess;
  let configFile: string;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-rotate-'));
    internet = await Internet.start({ destinations: [{ domain: 'gmail.test', mx: [{ name: 'mx.gmail.test', ip: '127.0.0.10' }] }] });
    configFile = path.join(dir, 'relay.yaml');
  });
  after(async () => {
    await relay?.stop();
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const config = (dkim: unknown[]) => internet.relayConfig({ domains: { 'example.test': { dkim } } });

  it('signs every message, before and after the switch to a new selector, and none fails', async () => {
    const old = makeKey(dir, 'example.test', 'old', 'rsa', { dns: internet.dns });
    const next = makeKey(dir, 'example.test', 'new', 'rsa', { dns: internet.dns });
    relay = await RelayProcess.start(configFile, config([{ selector: 'old', key: old.file }, { selector: 'new', key: next.file, standby: true }]));
    const destination = internet.destination('gmail.test');
    const total = 30;
    let sent = 0;
    const loop = (async () => {
      for (; sent < total; sent++) {
        const result = await send(relay.port, 'alice@example.test', ['bob@gmail.test'], message({ subject: `rotation ${sent}` }));
        assert.equal(result.data?.code, 250);
      }
    })();
    await destination.waitForMessages(10);
    const mark = relay.records.length;
    writeFileSync(configFile, stringify(config([{ selector: 'new', key: next.file }])));
    relay.child.kill('SIGHUP');
    await relay.waitFor((r) => r.msg === 'configuration reloaded', mark);
    await loop;
    const received = await destination.waitForMessages(total);
    const selectors = received.map((m) => m.verdict!.raw.dkim.results.map((r) => `${r.selector}:${r.status.result}`).join(','));
    assert.ok(selectors.every((s) => s === 'old:pass' || s === 'new:pass'), selectors.join(' '));
    assert.equal(selectors[0], 'old:pass');
    assert.equal(selectors[total - 1], 'new:pass');
  });

  it('keeps the running keys when the new configuration has a broken key, and logs an error', async () => {
    const mark = relay.records.length;
    writeFileSync(path.join(dir, 'broken.pem'), 'not a key');
    writeFileSync(configFile, stringify(config([{ selector: 'broken', key: path.join(dir, 'broken.pem') }])));
    relay.child.kill('SIGHUP');
    const record = await relay.waitFor((r) => r.msg === 'reload refused: the running configuration stays in use', mark);
    assert.equal(record.level, 'error');
    assert.match(String(record.error), /selector broken .*broken\.pem.*not a PEM private key/);
    const destination = internet.destination('gmail.test');
    const before = destination.received.length;
    assert.equal((await send(relay.port, 'alice@example.test', ['bob@gmail.test'], message())).data?.code, 250);
    const [last] = (await destination.waitForMessages(before + 1)).slice(-1);
    assert.deepEqual(last.verdict!.raw.dkim.results.map((r) => `${r.selector}:${r.status.result}`), ['new:pass']);
  });
});
