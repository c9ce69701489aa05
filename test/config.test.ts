import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError, loadConfig, parseConfig } from '../src/config/index.ts';
import { verifyPassword } from '../src/inbound/index.ts';
import { runCli } from './harness/process.ts';

const root = path.resolve(import.meta.dirname, '..');

describe('configuration', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'relay-config-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('loads the documented example and the demo config', () => {
    const example = loadConfig(path.join(root, 'config/relay.example.yaml'));
    assert.equal(example.listeners[0].port, 2525);
    assert.equal(example.egress[0].helo, 'auto');
    assert.equal(example.limits.maxMessageSize, 50 * 1024 * 1024);
    assert.equal(example.memo.ttl, 5 * 86_400_000);
    assert.deepEqual(example.clients.users[0].senderDomains, ['example.com']);
    assert.equal(example.delivery.mtaSts, true);
    assert.ok(example.delivery.routes.some((route) => route.auth && route.tls === 'required'));
    loadConfig(path.join(root, 'config/demo.yaml'));
  });

  it('names the key path of an unknown key and of a wrong type, on one line', () => {
    assert.throws(
      () => parseConfig({ egress: [{ ip: '203.0.113.10' }], delivery: { port: '25', rotues: [] } }),
      (err: Error) => err instanceof ConfigError && /delivery\.port: .*expected number/.test(err.message) && /delivery: unknown key "rotues"/.test(err.message) && !err.message.includes('\n'),
    );
    assert.throws(() => parseConfig({ egress: [{ ip: '203.0.113.300' }] }), /egress\[0\]\.ip: must be an IPv4 or IPv6 address/);
    assert.throws(() => parseConfig({ egress: [] }), /egress: /);
    assert.throws(() => parseConfig({ egress: [{ ip: '203.0.113.10' }], clients: { networks: ['10.0.0.0/33'] } }), /clients\.networks\[0\]: must be an address or CIDR/);
    assert.throws(() => parseConfig({ egress: [{ ip: '203.0.113.10' }], listeners: [{ port: 25, starttls: true }] }), /listeners\[0\]: uses TLS but no tls\.cert\/tls\.key is configured/);
  });

  it('reads DNS servers as address[:port] and Redis as a URL, Sentinel or Cluster, and says what is wrong', () => {
    const dns = (settings: Record<string, unknown>) => parseConfig({ egress: [{ ip: '203.0.113.10' }], dns: settings }).dns;
    assert.deepEqual(dns({ servers: ['10.0.0.2', '10.0.0.3:5353', '[2001:db8::53]:53'] }).servers, [
      { host: '10.0.0.2', port: 53 },
      { host: '10.0.0.3', port: 5353 },
      { host: '2001:db8::53', port: 53 },
    ]);
    assert.throws(() => dns({ servers: ['resolver.example'] }), /dns\.servers\[0\]: "resolver\.example" is not an IP address with an optional port/);
    assert.deepEqual(dns({ cache: { redis: { sentinels: ['10.0.0.5:26379'], name: 'relay' } } }).cache.redis, { sentinels: [{ host: '10.0.0.5', port: 26379 }], name: 'relay', tls: false });
    assert.throws(() => dns({ cache: { redis: 'localhost:6379' } }), /dns\.cache\.redis: must be a redis:\/\/ or rediss:\/\/ URL/);
    assert.throws(() => dns({ cache: { redis: { cluster: ['10.0.0.5'] } } }), /dns\.cache\.redis: must be a redis:\/\/ URL, \{sentinels/);
    assert.throws(() => dns({ cache: { minTtl: '2h' } }), /dns\.cache: minTtl must not exceed maxTtl/);
  });

  it('checks TLS policy and route settings, and never repeats a password in an error', () => {
    const base = { egress: [{ ip: '203.0.113.10' }] };
    const delivery = parseConfig({ ...base, delivery: { tls: { required: ['Bank.Example', '*.gov.example'] } } }).delivery;
    assert.deepEqual(delivery.tls.required, ['bank.example', '*.gov.example']);
    assert.equal(delivery.mtaSts, true);
    assert.throws(() => parseConfig({ ...base, delivery: { tls: { required: ['bank example'] } } }), /delivery\.tls\.required\[0\]: must be a domain, \*\.domain or \*/);
    assert.throws(() => parseConfig({ ...base, delivery: { routes: [{ domains: ['*'], host: 'smtp.isp.example', tls: 'verify' }] } }), /delivery\.routes\[0\]\.tls: /);
    assert.throws(
      () => parseConfig({ ...base, delivery: { routes: [{ domains: ['*'], host: 'smtp.isp.example', auth: { user: 'u', password: 'hunter2', passwordFile: '/x' } }] } }),
      (err: Error) => /delivery\.routes\[0\]\.auth: give exactly one of password and passwordFile/.test(err.message) && !err.message.includes('hunter2'),
    );
    assert.throws(
      () => parseConfig({ ...base, delivery: { routes: [{ domains: ['*'], host: 'smtp.isp.example', auth: { user: 'u', passwordFile: path.join(dir, 'missing') } }] } }),
      /delivery\.routes\[0\]\.auth\.passwordFile: cannot read .*missing: ENOENT/,
    );
    const file = path.join(dir, 'smarthost.password');
    writeFileSync(file, 's3cret\n');
    const [route] = parseConfig({ ...base, delivery: { routes: [{ domains: ['*'], host: 'smtp.isp.example', port: 587, tls: 'required', auth: { user: 'u', passwordFile: file } }] } }).delivery.routes;
    assert.deepEqual(route.auth, { user: 'u', password: 's3cret', allowCleartext: false });
    assert.equal(route.tls, 'required');
  });

  it('makes `start` exit 2 with one line naming the key when the file is wrong', async () => {
    const file = path.join(dir, 'bad.yaml');
    writeFileSync(file, 'egress:\n  - ip: 203.0.113.10\nlimits:\n  maxRecipients: many\n');
    const result = await runCli(['start', '--config', file]);
    assert.equal(result.code, 2);
    assert.equal(result.stderr.trim().split('\n').length, 1);
    assert.match(result.stderr, /^hygiene-relay: config error: .*bad\.yaml: limits\.maxRecipients: .*expected number/);
  });

  it('reports YAML syntax errors and missing files the same way', async () => {
    const file = path.join(dir, 'syntax.yaml');
    writeFileSync(file, 'egress: [\n');
    const syntax = await runCli(['start', '--config', file]);
    assert.equal(syntax.code, 2);
    assert.match(syntax.stderr, /not valid YAML/);
    const missing = await runCli(['start', '--config', path.join(dir, 'nope.yaml')]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /nope\.yaml: cannot read: ENOENT/);
  });

  it('`passwd` prints a scrypt hash the config accepts and that verifies', async () => {
    const result = await runCli(['passwd'], 'correct horse battery staple\n');
    assert.equal(result.code, 0);
    const hash = result.stdout.trim();
    assert.match(hash, /^scrypt\$N=\d+,r=\d+,p=\d+\$/);
    parseConfig({ egress: [{ ip: '203.0.113.10' }], clients: { users: [{ name: 'exchange', password: hash }] } });
    assert.equal(await verifyPassword('correct horse battery staple', hash), true);
    assert.equal(await verifyPassword('wrong', hash), false);
  });
});
