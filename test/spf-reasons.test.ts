import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { checkSpf, spfAdvice } from '../src/auth/index.ts';
import { uncachedResolver } from '../src/dns/index.ts';
import { RawClient } from './harness/client.ts';
import { DnsServer } from './harness/dns-server.ts';
import { World } from './harness/world.ts';

const IP = '127.0.0.2';

describe('an SPF permerror or temperror names its real cause', () => {
  let dns: DnsServer;
  let silent: DnsServer;
  before(async () => {
    [dns, silent] = await Promise.all([DnsServer.start(), DnsServer.start()]);
    dns.add('noinclude.test', { type: 'TXT', data: 'v=spf1 include:_spf.gone.test -all' });
    dns.add('_spf.gone.test', { type: 'A', data: '192.0.2.1' });
    dns.add('eleven.test', { type: 'TXT', data: `v=spf1 ${Array.from({ length: 11 }, (_, i) => `include:i${i}.eleven.test`).join(' ')} -all` });
    for (let i = 0; i < 11; i++) dns.add(`i${i}.eleven.test`, { type: 'TXT', data: 'v=spf1 ip4:192.0.2.1 ?all' });
    dns.add('voids.test', { type: 'TXT', data: 'v=spf1 a:v1.voids.test a:v2.voids.test a:v3.voids.test -all' });
    dns.add('syntax.test', { type: 'TXT', data: 'v=spf1 ip4:192.0.2.1 ip4:300.1.2.3 -all' });
    dns.add('nested.test', { type: 'TXT', data: 'v=spf1 include:_spf.nested.test -all' });
    dns.add('_spf.nested.test', { type: 'TXT', data: 'v=spf1 mx:/24x -all' });
    silent.fault('down.test', '*', 'timeout');
  });
  after(async () => {
    await Promise.all([dns.close(), silent.close()]);
  });

  const check = async (domain: string, server = dns) => {
    const resolve = uncachedResolver({ servers: [{ host: server.host, port: server.port }], timeout: 300, tries: 1 });
    const verdict = await checkSpf(`alice@${domain}`, { resolve, ip: IP, helo: 'relay.test' });
    return { verdict, advice: spfAdvice(verdict, IP) };
  };

  it('an include: naming a domain without SPF names the term, the record and the target', async () => {
    const { verdict, advice } = await check('noinclude.test');
    assert.equal(verdict.result, 'permerror');
    assert.equal(verdict.cause, '"include:_spf.gone.test" in the SPF record of noinclude.test names _spf.gone.test, which publishes no SPF record (a permerror, RFC 7208 §5.2, §6.1)');
    assert.match(advice, /^SPF of noinclude\.test is a permanent error \(its record: "v=spf1 include:_spf\.gone\.test -all"\): "include:_spf\.gone\.test"/);
    assert.doesNotMatch(advice, /syntax|number of lookups/);
  });

  it('eleven includes: the 10-lookup limit, with where the evaluation stopped', async () => {
    const { verdict } = await check('eleven.test');
    assert.equal(verdict.result, 'permerror');
    assert.equal(verdict.cause, 'the SPF record of eleven.test needs more than 10 DNS lookups (include, a, mx, ptr, exists and redirect each count; the limit of RFC 7208 §4.6.4), the evaluation stopped at lookup 11');
  });

  it('three void lookups: the void-lookup limit, naming them', async () => {
    const { verdict } = await check('voids.test');
    assert.equal(verdict.result, 'permerror');
    assert.equal(verdict.cause, 'more than 2 lookups of the SPF record of voids.test found no such name or no record (the void-lookup limit of RFC 7208 §4.6.4): A v1.voids.test, A v2.voids.test, A v3.voids.test');
  });

  it('a syntax error names the term and the record it is in, also inside an include', async () => {
    assert.equal((await check('syntax.test')).verdict.cause, 'the SPF record of syntax.test has a syntax error in "ip4:300.1.2.3": Invalid "ip4" term (RFC 7208 §4.6)');
    assert.equal((await check('nested.test')).verdict.cause, 'the SPF record of _spf.nested.test has a syntax error in "mx:/24x": Invalid domain-spec "/24x" (RFC 7208 §4.6)');
  });

  it('a DNS server that does not answer: the lookup and the server asked', async () => {
    const { verdict, advice } = await check('down.test', silent);
    assert.equal(verdict.result, 'temperror');
    assert.equal(verdict.cause, `DNS lookup of TXT down.test at ${silent.host}:${silent.port} failed (ETIMEOUT)`);
    assert.equal(advice, `SPF of down.test could not be checked: DNS lookup of TXT down.test at ${silent.host}:${silent.port} failed (ETIMEOUT)`);
  });
});

describe('a refusal longer than a reply line', () => {
  let world: World;
  before(async () => {
    world = await World.start({
      destinations: [{ domain: 'gmail.test', mx: [{ name: 'mx.gmail.test', ip: '127.0.0.10' }] }],
      config: (internet) => {
        // A long record that SPF-fails the egress: the reason quotes it whole.
        const long = Array.from({ length: 20 }, (_, i) => `ip4:192.0.2.${i + 1}`).join(' ');
        internet.dns.add('long.test', { type: 'TXT', data: `v=spf1 ${long} include:_spf.gone.test -all` });
        return { domains: { 'long.test': { policy: 'enforce', require: ['spf'] } } };
      },
    });
  });
  after(() => world.close());

  it('goes out as a multi-line reply, each line within 512 octets and with the enhanced code', async () => {
    const { client } = await RawClient.connect(world.relay.ports[0]);
    try {
      await client.command('EHLO client.test');
      const reply = await client.command('MAIL FROM:<alice@long.test>');
      assert.equal(reply.code, 550);
      assert.ok(reply.lines.length > 1, JSON.stringify(reply.lines));
      reply.lines.forEach((line, i) => {
        assert.ok(Buffer.byteLength(`${line}\r\n`) <= 512, line);
        assert.match(line, i < reply.lines.length - 1 ? /^550-5\.7\.23 \S/ : /^550 5\.7\.23 \S/);
      });
      const text = reply.lines.map((line) => line.slice('550-5.7.23 '.length)).join(' ');
      assert.match(text, /"include:_spf\.gone\.test" in the SPF record of long\.test names _spf\.gone\.test, which publishes no SPF record/);
    } finally {
      await client.quit();
    }
  });
});
