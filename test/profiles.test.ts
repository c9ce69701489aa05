import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { makeKey } from './harness/dkim.ts';
import { send } from './harness/send.ts';
import { message, World, type DestinationSpec } from './harness/world.ts';

/** MX hosts under the providers' own names, so the relay knows them as it would on the internet. */
const GMAIL: DestinationSpec = { domain: 'gmail.test', mx: [{ name: 'gmail-smtp-in.l.google.com', ip: '127.0.0.80' }] };
const OUTLOOK: DestinationSpec = { domain: 'outlook.test', mx: [{ name: 'outlook-test.mail.protection.outlook.com', ip: '127.0.0.81' }] };
const ISP: DestinationSpec = { domain: 'isp.test', mx: [{ name: 'mx.isp.test', ip: '127.0.0.82' }] };
/** Where status notifications to the senders arrive. */
const SENDERS: DestinationSpec[] = ['bare.test', 'spfonly.test', 'signed.test'].map((domain, i) => ({ domain, mx: [{ name: `mx.${domain}`, ip: `127.0.0.${90 + i}` }] }));

const SPF_EGRESS = 'v=spf1 ip4:127.0.0.2 -all';
/** A reply's whole text: a long one comes as several lines, each with the code and enhanced code. */
const fullText = (reply: { lines: string[] }) => reply.lines.map((line, i) => (i === 0 ? line.slice(4) : line.replace(/^\d{3}[ -]\d\.\d+\.\d+ /, ''))).join(' ');
const bulk = (from: string, to: string) =>
  message({ from, to, subject: 'November news' }).replace(
    'Subject: ',
    'List-Id: News <news.spfonly.test>\r\nList-Unsubscribe: <https://spfonly.test/u/1>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nSubject: ',
  );

interface UpstreamRecord {
  destination: string;
  profile?: { profile: string; bulk: boolean; verdict: string; summary?: string; reply?: string };
}

describe('each destination judged as its provider judges', () => {
  let world: World;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-profiles-'));
    world = await World.start({
      destinations: [GMAIL, OUTLOOK, ISP, ...SENDERS],
      config: (internet) => {
        internet.dns.add('spfonly.test', { type: 'TXT', data: SPF_EGRESS });
        internet.dns.add('signed.test', { type: 'TXT', data: SPF_EGRESS });
        internet.dns.add('_dmarc.signed.test', { type: 'TXT', data: 'v=DMARC1; p=none; rua=mailto:dmarc@signed.test' });
        return {
          domains: {
            'bare-monitor.test': { policy: 'monitor' },
            'signed.test': { dkim: [{ selector: 's1', key: makeKey(dir, 'signed.test', 's1', 'rsa', { dns: internet.dns }).file }] },
          },
        };
      },
    });
  });
  after(async () => {
    await world.close();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    for (const destination of world.destinations.values()) destination.received.length = 0;
  });
  const lastRecord = (from: string) => world.logs.transactions().findLast((r) => (r.envelope as { mailFrom: string }).mailFrom === from)!;
  const upstream = (record: Record<string, unknown>) => record.upstream as UpstreamRecord[];

  it('refuses mail with no SPF, no DKIM and no DMARC to Gmail under enforce, naming the SPF record and the DKIM key to create', async () => {
    const result = await send(world.port, 'alice@bare.test', ['bob@gmail.test'], message({ from: 'alice@bare.test' }));
    assert.equal(result.data?.code, 550, JSON.stringify(result.data));
    assert.match(fullText(result.data!), /^5\.7\.26 gmail would refuse: unauthenticated: gmail requires SPF or DKIM to pass and neither does/);
    assert.match(fullText(result.data!), /bare\.test publishes no SPF record: publish "v=spf1 ip4:127\.0\.0\.2 -all"/);
    assert.match(fullText(result.data!), /create one with "hygiene-relay dkim keygen --domain bare\.test --selector s1"/);
    assert.equal(world.destination('gmail.test').received.length, 0);
    assert.deepEqual(upstream(lastRecord('alice@bare.test'))[0].profile?.verdict, 'refused');
  });

  it('under monitor delivers it, and records that Gmail would refuse it as unauthenticated', async () => {
    const result = await send(world.port, 'alice@bare-monitor.test', ['bob@gmail.test'], message({ from: 'alice@bare-monitor.test' }));
    assert.equal(result.data?.code, 250);
    assert.equal(world.destination('gmail.test').received.length, 1);
    const { profile } = upstream(lastRecord('alice@bare-monitor.test'))[0];
    assert.equal(profile?.profile, 'gmail');
    assert.equal(profile?.verdict, 'would refuse (monitor)');
    assert.equal(profile?.summary, 'gmail would refuse: unauthenticated');
  });

  it('delivers to Gmail what SPF alone authenticates: no DKIM and no DMARC needed of a small sender', async () => {
    const result = await send(world.port, 'alice@spfonly.test', ['bob@gmail.test'], message({ from: 'alice@spfonly.test' }));
    assert.equal(result.data?.code, 250, JSON.stringify(result.data));
    assert.equal(world.destination('gmail.test').received[0].verdict?.spf, 'pass');
    assert.equal(upstream(lastRecord('alice@spfonly.test'))[0].profile?.verdict, 'pass');
  });

  it('refuses bulk mail without DKIM for Gmail and Outlook (bulk needs SPF and DKIM), naming the DKIM key to create', async () => {
    const result = await send(world.port, 'news@spfonly.test', ['bob@gmail.test', 'carol@outlook.test'], bulk('news@spfonly.test', 'bob@gmail.test'));
    assert.equal(result.data?.code, 550, JSON.stringify(result.data));
    assert.match(fullText(result.data!), /^5\.7\.26 (gmail|microsoft) would refuse: not authenticated by both SPF and DKIM, no DMARC record: \1 \(bulk mail\) requires SPF and DKIM to pass: no DKIM key is configured for spfonly\.test: create one with "hygiene-relay dkim keygen --domain spfonly\.test/);
    const profiles = upstream(lastRecord('news@spfonly.test')).map((u) => u.profile);
    assert.deepEqual(profiles.map((p) => [p?.profile, p?.bulk, p?.verdict]), [['gmail', true, 'refused'], ['microsoft', true, 'refused']]);
    assert.equal(world.destination('gmail.test').received.length + world.destination('outlook.test').received.length, 0);
  });

  it('delivers bulk mail that is signed, SPF-authenticated and DMARC-aligned with one-click unsubscribe', async () => {
    const result = await send(world.port, 'news@signed.test', ['bob@gmail.test', 'carol@outlook.test'], bulk('news@signed.test', 'bob@gmail.test'));
    assert.equal(result.data?.code, 250, JSON.stringify(result.data));
    assert.deepEqual(upstream(lastRecord('news@signed.test')).map((u) => u.profile?.verdict), ['pass', 'pass']);
  });

  it('delivers to the destination that would take it and reports the refused one to the sender: 250, and a retry does nothing twice', async () => {
    const body = bulk('news@spfonly.test', 'bob@gmail.test');
    const first = await send(world.port, 'news@spfonly.test', ['bob@gmail.test', 'dave@isp.test'], body);
    assert.equal(first.data?.code, 250, JSON.stringify(first.data));
    assert.match(first.data!.text, /1 refused, reported to the sender/);
    assert.equal(world.destination('isp.test').received.length, 1);
    assert.equal(world.destination('gmail.test').received.length, 0);
    const [notification] = await world.destination('spfonly.test').waitForMessages(1);
    assert.deepEqual(notification.envelope.rcptTo, ['news@spfonly.test']);
    assert.match(notification.message.toString(), /Final-Recipient: rfc822; bob@gmail\.test[\s\S]*Status: 5\.7\.26/);
    const record = lastRecord('news@spfonly.test');
    assert.deepEqual((record.recipients as { result: string }[]).map((r) => r.result), ['bounced', 'delivered']);

    const retry = await send(world.port, 'news@spfonly.test', ['bob@gmail.test', 'dave@isp.test'], body);
    assert.equal(retry.data?.code, 250);
    assert.equal(world.destination('isp.test').received.length, 1, 'no second copy');
    assert.equal(world.destination('spfonly.test').received.length, 1, 'no second notification');
    assert.deepEqual((lastRecord('news@spfonly.test').recipients as { result: string }[]).map((r) => r.result), ['already-bounced', 'already-delivered']);
  });
});

describe('the egress PTR, as the providers judge it', () => {
  const REVERSE = '2.0.0.127.in-addr.arpa';
  it('a PTR lookup that failed for now defers mail to Gmail (451 4.4.3), and the fixed DNS counts at once', async () => {
    // The PTR lookup times out while the relay starts: the identity is unverified, but nothing is known.
    const world = await World.start({
      destinations: [GMAIL],
      config: (internet) => {
        internet.dns.add('spfonly.test', { type: 'TXT', data: SPF_EGRESS });
        internet.dns.fault(REVERSE, 'PTR', 'servfail');
        return {};
      },
    });
    try {
      const deferred = await send(world.port, 'alice@spfonly.test', ['bob@gmail.test'], message({ from: 'alice@spfonly.test' }));
      assert.equal(deferred.data?.code, 451, JSON.stringify(deferred.data));
      assert.match(fullText(deferred.data!), /^4\.4\.3 gmail's verdict cannot be predicted \(PTR lookup for 127\.0\.0\.2 failed \(ESERVFAIL\)\)/);
      world.dns.fault(REVERSE, 'PTR', null);
      const delivered = await send(world.port, 'alice@spfonly.test', ['bob@gmail.test'], message({ from: 'alice@spfonly.test' }));
      assert.equal(delivered.data?.code, 250, JSON.stringify(delivered.data));
    } finally {
      await world.close();
    }
  });
});
