import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { send } from './harness/send.ts';
import { message, World } from './harness/world.ts';

const WRONG = 'v=spf1 ip4:192.0.2.1 -all';
const FIXED = 'v=spf1 ip4:127.0.0.2 -all';

/**
 * A refusal for good is decided on answers fetched fresh from DNS: the admin who fixes the
 * record the refusal named sees the next try pass, without waiting for the cached TTL.
 */
describe('a record fixed between two tries takes effect on the next one', () => {
  let world: World;
  before(async () => {
    world = await World.start({
      // The destinations do not verify: every query the DNS server sees is the relay's.
      verify: false,
      // The answers would be cached for an hour: only a fresh lookup can see the fix.
      config: (internet) => ({ dns: internet.dnsSettings({ minTtl: '1h' }), domains: { 'spfrequired.test': { require: ['spf'] } } }),
    });
    for (const domain of ['fixme.test', 'spfrequired.test']) {
      world.dns.add(domain, { type: 'TXT', data: WRONG, ttl: 3600 });
      world.dns.add(`_dmarc.${domain}`, { type: 'TXT', data: 'v=DMARC1; p=reject', ttl: 3600 });
    }
  });
  after(async () => {
    await world.close();
  });

  it('at the end of DATA (DMARC would fail, then SPF is fixed)', async () => {
    const first = await send(world.port, 'alice@fixme.test', ['bob@gmail.test'], message({ from: 'alice@fixme.test' }));
    assert.equal(first.data?.code, 550, JSON.stringify(first.data));
    const asked = world.dns.count('fixme.test', 'TXT');
    world.dns.set('fixme.test', [{ type: 'TXT', data: FIXED, ttl: 3600 }]);
    const second = await send(world.port, 'alice@fixme.test', ['bob@gmail.test'], message({ from: 'alice@fixme.test' }));
    assert.equal(second.data?.code, 250, JSON.stringify(second.data));
    assert.ok(world.dns.count('fixme.test', 'TXT') > asked, 'the record was asked for again, past the cache');
    // Passing mail goes on cached answers: the fresh one was kept for everyone.
    const settled = world.dns.count('fixme.test', 'TXT');
    assert.equal((await send(world.port, 'alice@fixme.test', ['bob@gmail.test'], message({ from: 'alice@fixme.test' }))).data?.code, 250);
    assert.equal(world.dns.count('fixme.test', 'TXT'), settled, 'a message that passes asks nothing fresh');
  });

  it('at MAIL FROM (SPF required, then fixed)', async () => {
    const first = await send(world.port, 'alice@spfrequired.test', ['bob@gmail.test'], message({ from: 'alice@spfrequired.test' }));
    assert.equal(first.mail.code, 550, JSON.stringify(first.mail));
    assert.match(first.mail.text, /^5\.7\.23 /);
    world.dns.set('spfrequired.test', [{ type: 'TXT', data: FIXED, ttl: 3600 }]);
    const second = await send(world.port, 'alice@spfrequired.test', ['bob@gmail.test'], message({ from: 'alice@spfrequired.test' }));
    assert.equal(second.mail.code, 250, JSON.stringify(second.mail));
    assert.equal(second.data?.code, 250, JSON.stringify(second.data));
  });
});
