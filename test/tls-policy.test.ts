import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, beforeEach, describe, it } from 'node:test';
import { parseConfig } from '../src/config/index.ts';
import { MemoryPolicyCache, MtaSts, resolveDestination, SharedPolicyCache } from '../src/delivery/index.ts';
import { uncachedResolver } from '../src/dns/index.ts';
import { createLogger } from '../src/observability/index.ts';
import { connectShared } from '../src/redis/index.ts';
import { RawClient } from './harness/client.ts';
import { DnsServer } from './harness/dns-server.ts';
import { PolicyServer } from './harness/mta-sts.ts';
import { RedisServer } from './harness/redis.ts';
import { send } from './harness/send.ts';
import { relayTlsFiles, testCa } from './harness/tls.ts';
import { message, World } from './harness/world.ts';

type LogRecord = Record<string, unknown>;
interface UpstreamRecord {
  destination: string;
  mxHost?: string;
  tlsPolicy: { required?: string[]; requireTls?: boolean; mtaSts?: { mode: string; id: string; excluded?: string[] }; wouldFail?: string[] };
  tls: { version: string; cipher: string; authorized: boolean; authorizationError?: string } | null;
  skipped?: string[];
  refused?: string;
}

/** The transaction record of the transaction that had `recipient`. */
async function recordFor(world: World, recipient: string): Promise<LogRecord & { upstream: UpstreamRecord[] }> {
  const record = await world.logs.waitFor((r) => r.msg === 'transaction' && ((r.envelope as { rcptTo: string[] }).rcptTo ?? []).includes(recipient));
  return record as LogRecord & { upstream: UpstreamRecord[] };
}

describe('TLS policy per destination domain', () => {
  let world: World;
  let tlsDir: string;
  let ca: string;
  before(async () => {
    const files = await relayTlsFiles();
    tlsDir = files.dir;
    ca = files.ca;
    world = await World.start({
      destinations: [
        { domain: 'plain.test', mx: [{ name: 'mx.plain.test', ip: '127.0.0.30' }], starttls: false },
        { domain: 'bank.test', mx: [{ name: 'mx.bank.test', ip: '127.0.0.31' }] },
        { domain: 'badcert.test', mx: [{ name: 'mx.badcert.test', ip: '127.0.0.32', certificateNames: ['other.test'] }] },
        { domain: 'open.test', mx: [{ name: 'mx.open.test', ip: '127.0.0.33' }], starttls: false },
        {
          domain: 'enforce.test',
          mx: [
            { name: 'mx1.enforce.test', ip: '127.0.0.34' },
            { name: 'mx2.enforce.test', ip: '127.0.0.35' },
          ],
          mtaSts: { mode: 'enforce', mx: ['mx2.enforce.test'] },
        },
        {
          domain: 'enforce-badcert.test',
          mx: [{ name: 'mx.enforce-badcert.test', ip: '127.0.0.36', certificateNames: ['wrong.test'] }],
          mtaSts: { mode: 'enforce', mx: ['mx.enforce-badcert.test'] },
        },
        {
          domain: 'testing.test',
          mx: [{ name: 'mx.testing.test', ip: '127.0.0.37', certificateNames: ['wrong.test'] }],
          mtaSts: { mode: 'testing', mx: ['*.elsewhere.test'] },
        },
        // Two domains on one MX host, only one of them with a policy (as at a big provider).
        { domain: 'strict-shared.test', mx: [{ name: 'mx.shared.test', ip: '127.0.0.38' }], mtaSts: { mode: 'enforce', mx: ['mx.shared.test'] } },
        { domain: 'lax-shared.test', mx: [{ name: 'mx.shared.test', ip: '127.0.0.38' }] },
        {
          domain: 'no-requiretls.test',
          mx: [{ name: 'mx.no-requiretls.test', ip: '127.0.0.39' }],
          hideRequireTls: true,
          mtaSts: { mode: 'enforce', mx: ['mx.no-requiretls.test'] },
        },
      ],
      config: (internet) => ({
        listeners: [{ host: '127.0.0.1', port: 0, starttls: true }],
        tls: { cert: files.cert, key: files.key },
        // Policies (and their TXT ids) change under the relay here; cached DNS would hide that.
        dns: internet.dnsSettings({ minTtl: 0, maxTtl: 0, negativeTtl: 0 }),
        delivery: {
          port: internet.mxPort,
          connectTimeout: '2s',
          commandTimeout: '10s',
          dataTimeout: '20s',
          tls: { required: ['plain.test', 'bank.test', 'badcert.test'] },
        },
      }),
    });
  });
  after(async () => {
    await world.close();
    rmSync(tlsDir, { recursive: true, force: true });
  });
  beforeEach(() => {
    for (const host of world.hosts.values()) host.received.length = 0;
  });

  it('defers with 451 4.7.5 when a domain that requires TLS is not offered STARTTLS, and sends nothing in the clear', async () => {
    const mx = world.destination('plain.test');
    const sent = await send(world.port, 'alice@example.test', ['bob@plain.test'], message({ to: 'bob@plain.test', body: 'account number 1234\r\n' }));
    assert.equal(sent.rcpts[0].code, 451, JSON.stringify(sent.rcpts));
    assert.match(sent.rcpts[0].text, /^4\.7\.5 plain\.test needs TLS with a certificate that verifies .*\(delivery\.tls\.required\).*mx\.plain\.test \[127\.0\.0\.30\]: mx\.plain\.test does not offer STARTTLS/);
    // On the wire at the destination: the greeting exchange and QUIT, no envelope, no message.
    assert.match(mx.wire, /^EHLO relay-out\.example\.test\r\n/);
    assert.match(mx.wire, /QUIT\r\n$/);
    assert.doesNotMatch(mx.wire, /MAIL FROM|RCPT TO|DATA|account number/i);
    assert.deepEqual(mx.mailFroms, []);
    assert.equal(mx.received.length, 0);
  });

  it('delivers to a domain that requires TLS over STARTTLS with a verified certificate, and records version, cipher and verification', async () => {
    const sent = await send(world.port, 'alice@example.test', ['bob@bank.test'], message({ to: 'bob@bank.test' }));
    assert.equal(sent.data?.code, 250, JSON.stringify(sent));
    const [received] = world.destination('bank.test').received;
    assert.equal(received.secure, true);
    assert.doesNotMatch(world.destination('bank.test').wire, /MAIL FROM/);
    const record = await recordFor(world, 'bob@bank.test');
    const [upstream] = record.upstream;
    assert.deepEqual(upstream.tlsPolicy.required, ['delivery.tls.required']);
    assert.match(upstream.tls!.version, /^TLSv1\.[23]$/);
    assert.ok(upstream.tls!.cipher.length > 0);
    assert.equal(upstream.tls!.authorized, true);
    assert.match(upstream.destination, /\|tls=verified$/);
  });

  it('defers with 451 4.7.5 when the certificate does not name the MX host, after nothing but STARTTLS and QUIT', async () => {
    const mx = world.destination('badcert.test');
    const sent = await send(world.port, 'alice@example.test', ['bob@badcert.test'], message({ to: 'bob@badcert.test' }));
    assert.equal(sent.rcpts[0].code, 451);
    assert.match(sent.rcpts[0].text, /^4\.7\.5 .*certificate of mx\.badcert\.test not verified \(ERR_TLS_CERT_ALTNAME_INVALID; it names DNS:other\.test\)/);
    assert.deepEqual(mx.mailFroms, []);
    assert.equal(mx.received.length, 0);
    assert.match(mx.wire, /^EHLO [^\r]+\r\nSTARTTLS\r\n$/);
  });

  it('delivers in the clear to a domain without STARTTLS when nothing requires TLS (opportunistic)', async () => {
    const sent = await send(world.port, 'alice@example.test', ['bob@open.test'], message({ to: 'bob@open.test' }));
    assert.equal(sent.data?.code, 250);
    assert.equal(world.destination('open.test').received[0].secure, false);
    const [upstream] = (await recordFor(world, 'bob@open.test')).upstream;
    assert.equal(upstream.tls, null);
    assert.equal(upstream.tlsPolicy.required, undefined);
    assert.match(upstream.destination, /\|tls=opportunistic$/);
  });

  it('MTA-STS enforce: skips the MX the policy does not list, delivers to the one it does', async () => {
    const skipped = world.host('mx1.enforce.test');
    const sent = await send(world.port, 'alice@example.test', ['bob@enforce.test'], message({ to: 'bob@enforce.test' }));
    assert.equal(sent.data?.code, 250, JSON.stringify(sent));
    assert.equal(skipped.connections, 0, 'the MX outside the policy was never contacted');
    assert.equal(world.host('mx2.enforce.test').received.length, 1);
    const [upstream] = (await recordFor(world, 'bob@enforce.test')).upstream;
    assert.equal(upstream.mxHost, 'mx2.enforce.test');
    assert.deepEqual(upstream.tlsPolicy.mtaSts, { mode: 'enforce', id: '1', excluded: ['mx1.enforce.test'] });
    assert.deepEqual(upstream.tlsPolicy.required, ['MTA-STS enforce (id 1)']);
    assert.equal(upstream.tls!.authorized, true);
  });

  it('MTA-STS enforce: no delivery and 451 4.7.5 when the MX certificate is for another name', async () => {
    const mx = world.destination('enforce-badcert.test');
    const sent = await send(world.port, 'alice@example.test', ['bob@enforce-badcert.test'], message({ to: 'bob@enforce-badcert.test' }));
    assert.equal(sent.rcpts[0].code, 451);
    assert.match(sent.rcpts[0].text, /^4\.7\.5 enforce-badcert\.test needs TLS .*MTA-STS enforce \(id 1\).*not verified \(ERR_TLS_CERT_ALTNAME_INVALID/);
    assert.deepEqual(mx.mailFroms, []);
    assert.equal(mx.received.length, 0);
  });

  it('MTA-STS testing: delivers although enforce would refuse, and logs what would have failed', async () => {
    const sent = await send(world.port, 'alice@example.test', ['bob@testing.test'], message({ to: 'bob@testing.test' }));
    assert.equal(sent.data?.code, 250, JSON.stringify(sent));
    assert.equal(world.destination('testing.test').received.length, 1);
    const [upstream] = (await recordFor(world, 'bob@testing.test')).upstream;
    assert.deepEqual(upstream.tlsPolicy.mtaSts, { mode: 'testing', id: '1' });
    assert.equal(upstream.tlsPolicy.required, undefined);
    assert.equal(upstream.tlsPolicy.wouldFail?.length, 2);
    assert.match(upstream.tlsPolicy.wouldFail![0], /mx\.testing\.test is not an MX host of the policy/);
    assert.match(upstream.tlsPolicy.wouldFail![1], /certificate not verified \(ERR_TLS_CERT_ALTNAME_INVALID; it names DNS:wrong\.test\)/);
    const warning = await world.logs.waitFor((r) => r.level === 'warn' && r.destination === 'testing.test');
    assert.match(String(warning.msg), /MTA-STS testing: delivering, but the policy in enforce mode would not allow it/);
  });

  it('fetches a policy once while it is cached, and again when the TXT record announces a new id', async () => {
    const policies = world.policies;
    const before = policies.fetches('enforce.test');
    for (let i = 0; i < 2; i++) {
      assert.equal((await send(world.port, 'alice@example.test', ['carol@enforce.test'], message({ to: 'carol@enforce.test' }))).data?.code, 250);
    }
    assert.equal(policies.fetches('enforce.test'), Math.max(before, 1), 'served from the cache');
    policies.publish('enforce.test', { mode: 'enforce', mx: ['mx2.enforce.test'], id: '2' });
    assert.equal((await send(world.port, 'alice@example.test', ['dave@enforce.test'], message({ to: 'dave@enforce.test' }))).data?.code, 250);
    assert.equal(policies.fetches('enforce.test'), Math.max(before, 1) + 1);
    const [upstream] = (await recordFor(world, 'dave@enforce.test')).upstream;
    assert.deepEqual(upstream.tlsPolicy.mtaSts, { mode: 'enforce', id: '2', excluded: ['mx1.enforce.test'] });
  });

  it('keeps domains with different policies on different sessions even when they share the MX host', async () => {
    const mx = world.host('mx.shared.test');
    const connectionsBefore = mx.connections;
    const recipients = ['a@strict-shared.test', 'b@lax-shared.test', 'c@strict-shared.test'];
    const sent = await send(world.port, 'alice@example.test', recipients, message({ to: recipients.join(', ') }));
    assert.equal(sent.data?.code, 250, JSON.stringify(sent));
    assert.equal(mx.connections - connectionsBefore, 2, 'one session per policy');
    assert.deepEqual(mx.received.map((r) => r.envelope.rcptTo).sort(), [['a@strict-shared.test', 'c@strict-shared.test'], ['b@lax-shared.test']]);
    const record = await recordFor(world, 'b@lax-shared.test');
    const keys = record.upstream.map((u) => u.destination);
    assert.equal(new Set(keys).size, 2);
    assert.ok(keys.some((k) => k.includes('tls=verified|mta-sts=enforce:1')));
    assert.ok(keys.some((k) => k.endsWith('tls=opportunistic')));
  });

  describe('REQUIRETLS (RFC 8689)', () => {
    async function sendRequireTls(recipient: string): Promise<{ mail: number; rcpt: { code: number; text: string }; data?: number }> {
      const { client } = await RawClient.connect(world.port);
      try {
        await client.command('EHLO corp-ex01.example.test');
        await client.starttls(ca);
        const ehlo = await client.command('EHLO corp-ex01.example.test');
        assert.ok(ehlo.lines.some((line) => /REQUIRETLS/.test(line)), 'offered to the client over TLS');
        const mail = await client.command('MAIL FROM:<alice@example.test> REQUIRETLS');
        assert.equal(mail.code, 250, mail.lines.join(" "));
        const rcpt = await client.command(`RCPT TO:<${recipient}>`);
        if (rcpt.code !== 250) return { mail: mail.code, rcpt };
        const { final } = await client.data(message({ to: recipient }));
        return { mail: mail.code, rcpt, data: final?.code };
      } finally {
        await client.quit();
      }
    }

    it('passes REQUIRETLS on to a destination whose MTA-STS policy lists the MX, over verified TLS', async () => {
      const sent = await sendRequireTls('erin@enforce.test');
      assert.equal(sent.data, 250, JSON.stringify(sent));
      const received = world.host('mx2.enforce.test').received.at(-1)!;
      assert.equal(received.envelope.requireTls, true);
      assert.equal(received.secure, true);
      const [upstream] = (await recordFor(world, 'erin@enforce.test')).upstream;
      assert.equal(upstream.tlsPolicy.requireTls, true);
      assert.match(upstream.destination, /\|requiretls$/);
    });

    it('refuses with 550 5.7.30 a domain without an MTA-STS policy: its MX hosts cannot be validated', async () => {
      const sent = await sendRequireTls('frank@bank.test');
      assert.equal(sent.rcpt.code, 550);
      assert.match(sent.rcpt.text, /^5\.7\.30 REQUIRETLS cannot be honoured for bank\.test: bank\.test publishes no MTA-STS policy/);
    });

    it('refuses with 550 5.7.30 when the destination does not offer REQUIRETLS, and sends it no envelope', async () => {
      const mx = world.destination('no-requiretls.test');
      const sent = await sendRequireTls('gina@no-requiretls.test');
      assert.equal(sent.rcpt.code, 550);
      assert.match(sent.rcpt.text, /^5\.7\.30 REQUIRETLS support required: no mail server of no-requiretls\.test offers it/);
      assert.deepEqual(mx.mailFroms, []);
    });

    it('sends without REQUIRETLS when the client did not ask for it', async () => {
      assert.equal((await send(world.port, 'alice@example.test', ['hank@no-requiretls.test'], message({ to: 'hank@no-requiretls.test' }))).data?.code, 250);
      assert.equal(world.destination('no-requiretls.test').received.at(-1)!.envelope.requireTls, undefined);
    });
  });
});

describe('MTA-STS policy cache', () => {
  let dns: DnsServer;
  let policies: PolicyServer;
  let ca: string;
  before(async () => {
    dns = await DnsServer.start();
    policies = await PolicyServer.start(dns);
    ca = await testCa();
  });
  after(async () => {
    await policies.close();
    await dns.close();
  });

  function mtaSts(clock: { now: number }): MtaSts {
    const resolve = uncachedResolver({ servers: [{ host: dns.host, port: dns.port }], timeout: 1000, tries: 1 });
    return new MtaSts({ resolve, cache: new MemoryPolicyCache(), ca, port: policies.port, now: () => clock.now });
  }

  it('shares policies between replicas through Redis: the second replica fetches nothing', async () => {
    policies.publish('fleet.test', { mode: 'enforce', mx: ['mx.fleet.test'] });
    const redis = await RedisServer.start();
    const logger = createLogger('silent');
    const stores = [0, 1].map(() => connectShared(redis.url, { timeout: 250, what: 'test', logger }));
    try {
      await Promise.all(stores.map((store) => store.ready));
      const resolve = uncachedResolver({ servers: [{ host: dns.host, port: dns.port }], timeout: 1000, tries: 1 });
      const [first, second] = stores.map((store) => new MtaSts({ resolve, cache: new SharedPolicyCache(store), ca, port: policies.port }));
      assert.equal((await first.lookup('fleet.test')).policy?.mode, 'enforce');
      assert.deepEqual((await second.lookup('fleet.test')).policy?.mx, ['mx.fleet.test']);
      assert.equal(policies.fetches('fleet.test'), 1);
    } finally {
      for (const store of stores) store.close();
      await redis.kill();
    }
  });

  it('keeps a policy for its max_age, then fetches it again', async () => {
    policies.publish('age.test', { mode: 'enforce', mx: ['mx.age.test'], maxAge: 3600 });
    const clock = { now: Date.now() };
    const sts = mtaSts(clock);
    const first = await sts.lookup('age.test');
    assert.deepEqual(first.policy && { mode: first.policy.mode, mx: first.policy.mx, maxAge: first.policy.maxAge, id: first.policy.id }, { mode: 'enforce', mx: ['mx.age.test'], maxAge: 3600, id: '1' });
    clock.now += 3599_000;
    await sts.lookup('age.test');
    assert.equal(policies.fetches('age.test'), 1);
    clock.now += 2_000;
    const again = await sts.lookup('age.test');
    assert.equal(policies.fetches('age.test'), 2);
    assert.equal(again.policy?.mode, 'enforce');
  });

  it('applies the cached policy when a new one cannot be fetched, and no policy (fail-open) when none is cached', async () => {
    policies.publish('broken.test', { mode: 'enforce', mx: ['mx.broken.test'] });
    const sts = mtaSts({ now: Date.now() });
    assert.equal((await sts.lookup('broken.test')).policy?.mode, 'enforce');
    policies.publish('broken.test', { mode: 'enforce', mx: ['mx.broken.test'], id: '2' }).breakFile('broken.test');
    const stale = await sts.lookup('broken.test');
    assert.equal(stale.policy?.id, '1');
    assert.match(stale.error!, /could not be fetched from https:\/\/mta-sts\.broken\.test\/\.well-known\/mta-sts\.txt: HTTP 404/);
    const fresh = await mtaSts({ now: Date.now() }).lookup('broken.test');
    assert.equal(fresh.policy, undefined);
    assert.match(fresh.error!, /HTTP 404/);
  });

  it('treats a domain without a TXT record as having no policy, and a policy with mode none as none', async () => {
    const sts = mtaSts({ now: Date.now() });
    assert.deepEqual(await sts.lookup('nothing.test'), {});
    policies.publish('withdrawn.test', { mode: 'none', mx: [] });
    assert.equal((await sts.lookup('withdrawn.test')).policy?.mode, 'none');
  });

  it('is not consulted when delivery.mtaSts is false, except for a REQUIRETLS transaction', async () => {
    dns.add('off.test', { type: 'MX', data: { preference: 10, exchange: 'mx.off.test' } });
    policies.publish('off.test', { mode: 'enforce', mx: ['mx.elsewhere.test'] });
    const resolve = uncachedResolver({ servers: [{ host: dns.host, port: dns.port }], timeout: 1000, tries: 1 });
    const sts = mtaSts({ now: Date.now() });
    const delivery = (mtaStsOn: boolean) => parseConfig({ egress: [{ ip: '127.0.0.2' }], delivery: { mtaSts: mtaStsOn } }).delivery;
    const on = await resolveDestination('off.test', delivery(true), resolve, { mtaSts: sts });
    assert.ok('kind' in on && on.kind === 'temporary');
    assert.match(on.reply.lines[0], /no MX host of off\.test \(mx\.off\.test\) is allowed by its MTA-STS policy/);
    const off = await resolveDestination('off.test', delivery(false), resolve, { mtaSts: sts });
    assert.ok(!('kind' in off));
    assert.equal(off.key, 'mx:mx.off.test:25|tls=opportunistic');
    const requireTls = await resolveDestination('off.test', delivery(false), resolve, { mtaSts: sts, requireTls: true });
    assert.ok('kind' in requireTls && requireTls.reply.enhanced === '4.7.5');
  });

  it('does not trust a policy host whose certificate does not verify', async () => {
    const resolve = uncachedResolver({ servers: [{ host: dns.host, port: dns.port }], timeout: 1000, tries: 1 });
    policies.publish('untrusted.test', { mode: 'enforce', mx: ['mx.untrusted.test'] });
    // Without the test CA, the policy host's certificate chains to nothing the relay trusts.
    const sts = new MtaSts({ resolve, port: policies.port });
    const result = await sts.lookup('untrusted.test');
    assert.equal(result.policy, undefined);
    assert.match(result.error!, /certificate|UNABLE_TO_VERIFY|self.signed/i);
  });
});
