import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Fault } from './harness/dns-server.ts';
import { makeKey } from './harness/dkim.ts';
import { send } from './harness/send.ts';
import { message, World, type Internet } from './harness/world.ts';

const NOT_THE_EGRESS = 'v=spf1 ip4:192.0.2.1 -all';

/**
 * Each lookup whose answer could change the verdict, in a domain where it does: the other
 * checks fail, so only that answer could make the message pass.
 */
const LOOKUPS = [
  // SPF alone could align (no DKIM key): its include chain matters.
  { lookup: 'TXT _spf.spfchain.test', from: 'alice@spfchain.test', answered: 550 },
  // SPF does not authorize the egress: only the relay's own DKIM signature aligns.
  { lookup: 'TXT k1._domainkey.dkimkey.test', from: 'alice@dkimkey.test', answered: 250 },
  // Neither passes: whether the domain publishes DMARC (and which policy) decides.
  { lookup: 'TXT _dmarc.dmarcrec.test', from: 'alice@dmarcrec.test', answered: 550 },
  // No record at the From domain: the organizational domain's record decides (RFC 7489 §6.6.3).
  { lookup: 'TXT _dmarc.orgdmarc.test', from: 'alice@mail.orgdmarc.test', answered: 550 },
] as const;
const FAULTS: Fault[] = ['timeout', 'servfail', 'truncated'];
const CODE: Record<string, string> = { timeout: 'ETIMEOUT', servfail: 'ESERVFAIL', truncated: 'ETIMEOUT' };

function zones(internet: Internet, dir: string): Record<string, unknown> {
  const { dns } = internet;
  dns.add('spfchain.test', { type: 'TXT', data: 'v=spf1 include:_spf.spfchain.test -all' });
  dns.add('_spf.spfchain.test', { type: 'TXT', data: NOT_THE_EGRESS });
  dns.add('_dmarc.spfchain.test', { type: 'TXT', data: 'v=DMARC1; p=reject' });
  dns.add('dkimkey.test', { type: 'TXT', data: NOT_THE_EGRESS });
  dns.add('_dmarc.dkimkey.test', { type: 'TXT', data: 'v=DMARC1; p=reject' });
  dns.add('dmarcrec.test', { type: 'TXT', data: NOT_THE_EGRESS });
  dns.add('_dmarc.dmarcrec.test', { type: 'TXT', data: 'v=DMARC1; p=reject' });
  dns.add('mail.orgdmarc.test', { type: 'TXT', data: NOT_THE_EGRESS });
  dns.add('_dmarc.orgdmarc.test', { type: 'TXT', data: 'v=DMARC1; p=reject' });
  return { 'dkimkey.test': { dkim: [{ selector: 'k1', key: makeKey(dir, 'dkimkey.test', 'k1', 'rsa', { dns }).file }] } };
}

describe('a DNS failure on a lookup that decides the verdict is always temporary (451 4.4.3, naming the lookup)', () => {
  let world: World;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-preflight-dns-'));
    world = await World.start({
      destinations: [{ domain: 'gmail.test', mx: [{ name: 'mx.gmail.test', ip: '127.0.0.10' }] }],
      // Nothing cached: each case must ask the DNS server that fails it.
      config: (internet) => ({ domains: zones(internet, dir), dns: { ...internet.dnsSettings({ minTtl: 0, maxTtl: 0, negativeTtl: 0 }), timeout: '300ms' } }),
    });
  });
  after(async () => {
    await world.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('answered for good when every lookup answers: the one that fails below is what decides', async () => {
    for (const { from, answered } of LOOKUPS) {
      const result = await send(world.port, from, ['bob@gmail.test'], message({ from }));
      assert.equal(result.data?.code, answered, `${from}: ${JSON.stringify(result.data)}`);
    }
  });

  for (const { lookup, from } of LOOKUPS) {
    for (const fault of FAULTS) {
      it(`${lookup} meets ${fault}`, async () => {
        const name = lookup.split(' ')[1];
        world.dns.fault(name, 'TXT', fault);
        try {
          const before = world.destination('gmail.test').received.length;
          const result = await send(world.port, from, ['bob@gmail.test'], message({ from }));
          const reply = result.data ?? result.mail;
          assert.equal(reply.code, 451, JSON.stringify(reply));
          assert.match(reply.text, /^4\.4\.3 /);
          assert.ok(reply.text.includes(`DNS lookup of ${lookup} at ${world.dns.address} failed (${CODE[fault]})`), reply.text);
          assert.doesNotMatch(reply.text, /publish|add ip4|keygen|dkim check/, 'no advice to fix a record that may be fine');
          assert.equal(world.destination('gmail.test').received.length, before, 'nothing was delivered');
        } finally {
          world.dns.fault(name, 'TXT', null);
        }
      });
    }
  }
});
