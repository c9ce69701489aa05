import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../src/config/index.ts';
import { uncachedResolver } from '../src/dns/index.ts';
import { canonicalAddress, reverseName } from '../src/ip/index.ts';
import { EgressPool, IdentityError, verifyEgress } from '../src/identity/index.ts';
import { createLogger } from '../src/observability/index.ts';
import { startRelay } from '../src/relay.ts';
import { DnsServer } from './harness/dns-server.ts';
import { send } from './harness/send.ts';
import { Internet, LogCapture, message, World } from './harness/world.ts';

const NO_CACHE = { minTtl: 0, maxTtl: 0, negativeTtl: 0 };

describe('egress identity', () => {
  let dns: DnsServer;
  before(async () => {
    dns = await DnsServer.start();
    dns.addPtr('127.0.0.2', 'good.example.test');
    dns.addPtr('127.0.0.3', 'unconfirmed.example.test', { forward: false });
    dns.add('unconfirmed.example.test', { type: 'A', data: '127.0.0.99' });
    dns.addPtr('127.0.0.6', 'mail_out.example.test');
  });
  after(async () => dns.close());
  const resolve = () => uncachedResolver({ servers: [{ host: dns.host, port: dns.port }], timeout: 1000, tries: 1 });

  it('takes the PTR as HELO when it forward-confirms', async () => {
    const egress = await verifyEgress({ ip: '127.0.0.2', helo: 'auto' }, resolve());
    assert.deepEqual(egress, { ip: '127.0.0.2', bind: '127.0.0.2', helo: 'good.example.test', verified: true });
  });

  it('does not verify a PTR whose name resolves elsewhere, and says which record to add', async () => {
    const egress = await verifyEgress({ ip: '127.0.0.3', helo: 'auto' }, resolve());
    assert.equal(egress.verified, false);
    assert.match(egress.problem!, /unconfirmed\.example\.test, but that name does not resolve back to 127\.0\.0\.3: add an A\/AAAA record/);
  });

  it('never takes a PTR that is no host name as the HELO, even when it forward-confirms', async () => {
    const egress = await verifyEgress({ ip: '127.0.0.6', helo: 'auto' }, resolve());
    assert.equal(egress.verified, false);
    assert.equal(egress.helo, '[127.0.0.6]');
    assert.match(egress.problem!, /PTR of 127\.0\.0\.6 is "mail_out\.example\.test", not a host name usable as HELO/);
  });

  it('does not verify an address without PTR, nor a configured HELO the PTR does not name', async () => {
    const none = await verifyEgress({ ip: '127.0.0.4', helo: 'auto' }, resolve());
    assert.equal(none.verified, false);
    assert.equal(none.helo, '[127.0.0.4]');
    assert.match(none.problem!, /no PTR record for 127\.0\.0\.4/);
    const mismatch = await verifyEgress({ ip: '127.0.0.2', helo: 'mail.example.test' }, resolve());
    assert.equal(mismatch.verified, false);
    assert.match(mismatch.problem!, /PTR of 127\.0\.0\.2 is good\.example\.test, not the configured HELO mail\.example\.test/);
  });
});

describe('IPv6 egress', () => {
  let dns: DnsServer;
  before(async () => {
    dns = await DnsServer.start();
    dns.addPtr('127.0.0.2', 'v4.example.test');
    dns.addPtr('2001:db8::10', 'v6.example.test');
    // A PTR whose name has no AAAA back to the address: Gmail refuses such an IPv6 sender.
    dns.addPtr('2001:db8::20', 'v6-unconfirmed.example.test', { forward: false });
  });
  after(async () => dns.close());

  async function pool(egress: string[], strict = false): Promise<EgressPool> {
    const config = parseConfig({ egress: egress.map((ip) => ({ ip })), strict, dns: { servers: [dns.address] } });
    const egressPool = new EgressPool(config, uncachedResolver(config.dns), createLogger('silent'));
    await egressPool.check(true);
    return egressPool;
  }

  it('never uses an IPv6 identity that does not verify, even outside strict mode', async () => {
    assert.equal((await pool(['2001:db8::20', '127.0.0.2'])).select()?.ip, '127.0.0.2');
    assert.equal((await pool(['2001:db8::20'])).select(), undefined);
    // An unverified IPv4 identity is still usable outside strict mode (with a warning at start).
    assert.equal((await pool(['2001:db8::20', '127.0.0.77'])).select()?.ip, '127.0.0.77');
  });

  it('prefers IPv4 when both verify, and uses a verified IPv6 identity alone', async () => {
    assert.equal((await pool(['2001:db8::10', '127.0.0.2'])).select()?.ip, '127.0.0.2');
    const v6 = (await pool(['2001:db8::10'], true)).select();
    assert.deepEqual(v6 && [v6.ip, v6.helo, v6.verified], ['2001:db8::10', 'v6.example.test', true]);
  });
});

describe('strict mode', () => {
  let internet: Internet;
  before(async () => {
    internet = await Internet.start({ egress: [{ ip: '127.0.0.2', ptr: 'relay-out.example.test' }] });
  });
  after(async () => internet.close());

  it('refuses to start when an egress identity does not verify', async () => {
    const config = parseConfig(internet.relayConfig({ strict: true, egress: [{ ip: '127.0.0.2' }, { ip: '127.0.0.40' }] }));
    await assert.rejects(startRelay(config, createLogger('silent')), (err: Error) => err instanceof IdentityError && /127\.0\.0\.40: no PTR record/.test(err.message));
  });

  it('takes an identity that stops verifying out of use, and back when it verifies again', async () => {
    const logs = new LogCapture();
    // DNS changes under the relay here; a cached answer would hide them until it expires.
    const config = parseConfig(internet.relayConfig({ strict: true, dns: internet.dnsSettings(NO_CACHE) }));
    const relay = await startRelay(config, createLogger('info', logs));
    try {
      assert.equal((await send(relay.ports[0], 'alice@example.test', ['bob@gmail.test'], message())).data?.code, 250);

      internet.dns.remove('relay-out.example.test', 'A');
      await relay.egress.check(false);
      const refused = await send(relay.ports[0], 'alice@example.test', ['bob@gmail.test'], message());
      assert.equal(refused.mail.code, 451);
      assert.match(refused.mail.text, /^4\.3\.5 no egress identity verifies/);
      assert.ok(logs.records.some((r) => r.level === 'error' && r.msg === 'egress identity stopped verifying: taken out of use'));

      internet.dns.add('relay-out.example.test', { type: 'A', data: '127.0.0.2' });
      await relay.egress.check(false);
      assert.equal((await send(relay.ports[0], 'alice@example.test', ['bob@gmail.test'], message())).data?.code, 250);
      assert.ok(logs.records.some((r) => r.msg === 'egress identity verifies again'));
    } finally {
      await relay.close();
    }
  });
});

describe('egress identity re-check and DNS trouble', () => {
  it('keeps the last result when a re-check meets SERVFAIL, instead of switching the HELO', async () => {
    const internet = await Internet.start({ egress: [{ ip: '127.0.0.2', ptr: 'relay-out.example.test' }] });
    const logs = new LogCapture();
    const relay = await startRelay(parseConfig(internet.relayConfig({ strict: true, dns: internet.dnsSettings(NO_CACHE) })), createLogger('info', logs));
    try {
      internet.dns.fault('2.0.0.127.in-addr.arpa', 'PTR', 'servfail');
      await relay.egress.check(false);
      assert.deepEqual(relay.egress.identities.map((e) => [e.helo, e.verified]), [['relay-out.example.test', true]]);
      assert.ok(logs.records.some((r) => r.msg === 'egress identity re-check inconclusive; keeping the last result'));
      const sent = await send(relay.ports[0], 'alice@example.test', ['bob@gmail.test'], message());
      assert.equal(sent.data?.code, 250);
      assert.equal(internet.destination('gmail.test').received.at(-1)?.helo, 'relay-out.example.test');
    } finally {
      await relay.close();
      await internet.close();
    }
  });
});

describe('IPv6 addresses with a dotted-quad tail (RFC 4291 §2.2 form 3)', () => {
  it('reverses an IPv4-mapped address under in-addr.arpa, and any other one as the nibbles of its last 32 bits', () => {
    assert.equal(reverseName('::FFFF:1.2.3.4'), '4.3.2.1.in-addr.arpa');
    assert.equal(reverseName('::ffff:0102:0304'), '4.3.2.1.in-addr.arpa');
    assert.equal(reverseName('CAFE:BABE::192.168.218.40'), `8.2.a.d.8.a.0.c.${'0.'.repeat(16)}e.b.a.b.e.f.a.c.ip6.arpa`);
    assert.equal(reverseName('CAFE:BABE::192.168.218.40'), reverseName('cafe:babe::c0a8:da28'));
    // IPv4-compatible (deprecated, RFC 4291 §2.5.5.1) is no IPv4 address.
    assert.equal(reverseName('::1.2.3.4'), `4.0.3.0.2.0.1.0.${'0.'.repeat(24)}ip6.arpa`);
    assert.equal(reverseName('192.0.2.1'), '1.2.0.192.in-addr.arpa');
  });

  it('takes an IPv4-mapped address as its IPv4 address, and writes other IPv6 in RFC 5952 text', () => {
    assert.equal(canonicalAddress('::FFFF:127.0.0.5'), '127.0.0.5');
    assert.equal(canonicalAddress('CAFE:BABE::192.168.218.40'), 'cafe:babe::c0a8:da28');
    assert.equal(canonicalAddress('relay.example.test'), undefined);
    const config = parseConfig({ egress: [{ ip: '::FFFF:1.2.3.4', bind: 'CAFE:BABE::192.168.218.40' }], dns: { servers: ['[::ffff:127.0.0.1]:5353'] } });
    assert.deepEqual([config.egress[0].ip, config.egress[0].bind, config.dns.servers[0]], ['1.2.3.4', 'cafe:babe::c0a8:da28', { host: '127.0.0.1', port: 5353 }]);
  });

  it('verifies an IPv6 egress written with a dotted-quad tail against its AAAA in hex', async () => {
    const dns = await DnsServer.start();
    try {
      dns.addPtr('cafe:babe::c0a8:da28', 'v6-tail.example.test');
      const egress = await verifyEgress({ ip: 'CAFE:BABE::192.168.218.40', helo: 'auto' }, uncachedResolver({ servers: [{ host: dns.host, port: dns.port }], timeout: 1000, tries: 1 }));
      assert.deepEqual([egress.helo, egress.verified], ['v6-tail.example.test', true]);
    } finally {
      await dns.close();
    }
  });

  it('verifies an egress written ::FFFF:127.0.0.5 as 127.0.0.5, binds it and sends from it; the receiver sees IPv4 and SPF passes', async () => {
    // The internet knows 127.0.0.5 (PTR, A, ip4: in example.test's SPF); the relay is configured with its mapped form.
    const world = await World.start({ egress: [{ ip: '127.0.0.5', ptr: 'relay-mapped.example.test' }], config: { strict: true, egress: [{ ip: '::FFFF:127.0.0.5' }] } });
    try {
      assert.deepEqual(
        world.relay.egress.identities.map((e) => [e.ip, e.bind, e.helo, e.verified]),
        [['127.0.0.5', '127.0.0.5', 'relay-mapped.example.test', true]],
      );
      const sent = await send(world.port, 'alice@example.test', ['bob@gmail.test'], message({ messageId: 'mapped@example.test' }));
      assert.equal(sent.data?.code, 250);
      const [received] = await world.destination('gmail.test').waitForMessages(1);
      assert.deepEqual([received.clientAddress, received.helo], ['127.0.0.5', 'relay-mapped.example.test']);
      assert.equal(received.verdict!.raw.spf && received.verdict!.raw.spf['client-ip'], '127.0.0.5');
      assert.equal(received.verdict!.spf, 'pass');
      const record = await world.logs.waitFor((r) => r.msg === 'transaction' && r.messageId === '<mapped@example.test>');
      assert.equal((record.spf as { result: string }).result, 'pass');
    } finally {
      await world.close();
    }
  });
});
