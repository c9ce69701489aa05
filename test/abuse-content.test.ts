import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { makeKey } from './harness/dkim.ts';
import { send } from './harness/send.ts';
import { message, World, type DestinationSpec } from './harness/world.ts';

/** Destinations of no known provider: the rules hold for every destination, not only Gmail's and Yahoo's. */
const ISP: DestinationSpec = { domain: 'isp.test', mx: [{ name: 'mx.isp.test', ip: '127.0.0.82' }] };
const SPF_EGRESS = 'v=spf1 ip4:127.0.0.2 -all';
const ONE_CLICK = 'List-Unsubscribe: <https://news.test/u/1>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n';
/** A reply's whole text: a long one comes as several lines, each with the code and enhanced code. */
const fullText = (reply: { lines: string[] }) => reply.lines.map((line, i) => (i === 0 ? line.slice(4) : line.replace(/^\d{3}[ -]\d\.\d+\.\d+ /, ''))).join(' ');
/** A message with extra header fields before Subject. */
const withFields = (from: string, fields: string) => message({ from, to: 'bob@isp.test', subject: 'November news' }).replace('Subject: ', `${fields}Subject: `);

interface Rules {
  verdict: string;
  breaches: { rule: string; reason: string }[];
}

describe("the relay's rules: bulk mail offers one-click unsubscribe, and nobody sends as a mailbox provider", () => {
  let world: World;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-rules-'));
    world = await World.start({
      destinations: [ISP],
      config: (internet) => {
        for (const domain of ['news.test', 'monitor.test', 'icloud.test']) {
          internet.dns.add(domain, { type: 'TXT', data: SPF_EGRESS });
          internet.dns.add(`_dmarc.${domain}`, { type: 'TXT', data: `v=DMARC1; p=reject; rua=mailto:dmarc@${domain}` });
        }
        const key = (domain: string) => [{ selector: 's1', key: makeKey(dir, domain, 's1', 'rsa', { dns: internet.dns }).file }];
        return {
          hygiene: { consumerDomains: ['gmail.test', 'yahoo.test', 'icloud.test'] },
          domains: {
            'news.test': { dkim: key('news.test') },
            'bulk.test': { bulk: true },
            'monitor.test': { policy: 'monitor', dkim: key('monitor.test') },
            'yahoo.test': { policy: 'monitor' },
            // A consumer domain the relay does hold a key for is its own to send.
            'icloud.test': { dkim: key('icloud.test') },
          },
        };
      },
    });
  });
  after(async () => {
    await world.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const lastRecord = (from: string) => world.logs.transactions().findLast((r) => (r.envelope as { mailFrom: string }).mailFrom === from)!;
  const received = () => world.destination('isp.test').received;

  it('refuses bulk mail (List-Id) without one-click unsubscribe under enforce, naming both missing fields', async () => {
    const result = await send(world.port, 'news@news.test', ['bob@isp.test'], withFields('news@news.test', 'List-Id: News <news.news.test>\r\n'));
    assert.equal(result.data?.code, 550, JSON.stringify(result.data));
    assert.match(fullText(result.data!), /^5\.7\.1 bulk mail needs one-click unsubscribe \(RFC 8058\), and the message lacks List-Unsubscribe \(with an https URI\) and List-Unsubscribe-Post: List-Unsubscribe=One-Click/);
    const rules = lastRecord('news@news.test').rules as Rules;
    assert.equal(rules.verdict, 'refused');
    assert.deepEqual(rules.breaches.map((b) => b.rule), ['bulk-unsubscribe']);
  });

  it('names what one-click lacks: an https URI (a mailto: only), or the List-Unsubscribe-Post field', async () => {
    const mailto = await send(world.port, 'news@news.test', ['bob@isp.test'], withFields('news@news.test', 'List-Unsubscribe: <mailto:unsub@news.test>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n'));
    assert.equal(mailto.data?.code, 550);
    assert.match(fullText(mailto.data!), /lacks an https URI in List-Unsubscribe \(relay id/);
    const noPost = await send(world.port, 'news@news.test', ['bob@isp.test'], withFields('news@news.test', 'List-Unsubscribe: <https://news.test/u/1>\r\n'));
    assert.equal(noPost.data?.code, 550);
    assert.match(fullText(noPost.data!), /lacks List-Unsubscribe-Post: List-Unsubscribe=One-Click \(relay id/);
  });

  it('counts a domain configured as bulk as bulk whatever its headers say', async () => {
    const result = await send(world.port, 'info@bulk.test', ['bob@isp.test'], message({ from: 'info@bulk.test', to: 'bob@isp.test' }));
    assert.equal(result.data?.code, 550, JSON.stringify(result.data));
    assert.match(fullText(result.data!), /^5\.7\.1 bulk mail needs one-click unsubscribe/);
  });

  it('delivers bulk mail with one-click unsubscribe, both fields covered by a DKIM signature that verifies', async () => {
    const before = received().length;
    const result = await send(world.port, 'news@news.test', ['bob@isp.test'], withFields('news@news.test', `List-Id: News <news.news.test>\r\n${ONE_CLICK}`));
    assert.equal(result.data?.code, 250, JSON.stringify(result.data));
    const [arrived] = (await world.destination('isp.test').waitForMessages(before + 1)).slice(before);
    assert.deepEqual(arrived.verdict!.dkim, ['pass'], JSON.stringify(arrived.verdict!.raw.dkim.results.map((r) => r.status)));
    // The signature's own h= tag, unfolded: RFC 8058 §4 wants both fields signed.
    const signature = /^DKIM-Signature:((?:.*\r\n[ \t].*)*.*)\r\n/im.exec(arrived.message.toString('latin1'))![1].replace(/\s+/g, '');
    const signed = /;h=([^;]+)/.exec(signature)![1].toLowerCase().split(':');
    assert.ok(signed.includes('list-unsubscribe') && signed.includes('list-unsubscribe-post'), signed.join(':'));
    assert.equal(lastRecord('news@news.test').rules, undefined);
  });

  it('under monitor delivers bulk mail without one-click unsubscribe and records what enforce would refuse', async () => {
    const result = await send(world.port, 'news@monitor.test', ['bob@isp.test'], withFields('news@monitor.test', 'Precedence: bulk\r\n'));
    assert.equal(result.data?.code, 250, JSON.stringify(result.data));
    const rules = lastRecord('news@monitor.test').rules as Rules;
    assert.equal(rules.verdict, 'would refuse (monitor)');
    assert.deepEqual(rules.breaches.map((b) => b.rule), ['bulk-unsubscribe']);
  });

  it('refuses a From in a configured consumer domain under enforce, saying why', async () => {
    const result = await send(world.port, 'someone@gmail.test', ['bob@isp.test'], message({ from: 'someone@gmail.test', to: 'bob@isp.test' }));
    assert.equal(result.data?.code, 550, JSON.stringify(result.data));
    assert.match(
      fullText(result.data!),
      /^5\.7\.1 From gmail\.test is a mailbox provider's domain the relay has no DKIM key for: its DMARC policy makes mail it did not send fail \(Gmail forbids it outright\); send as a domain of your own and put the address in Reply-To/,
    );
    assert.deepEqual((lastRecord('someone@gmail.test').rules as Rules).breaches.map((b) => b.rule), ['consumer-from']);
  });

  it('refuses a From in the shipped list (gmail.com), also when the envelope sender is the company', async () => {
    const result = await send(world.port, 'alice@news.test', ['bob@isp.test'], message({ from: 'alice@gmail.com', to: 'bob@isp.test' }));
    assert.equal(result.data?.code, 550, JSON.stringify(result.data));
    assert.match(fullText(result.data!), /^5\.7\.1 From gmail\.com is a mailbox provider's domain/);
  });

  it('names both breaches in one reply', async () => {
    const result = await send(world.port, 'list@gmail.test', ['bob@isp.test'], withFields('list@gmail.test', 'List-Id: L <l.gmail.test>\r\n'));
    assert.equal(result.data?.code, 550);
    assert.deepEqual((lastRecord('list@gmail.test').rules as Rules).breaches.map((b) => b.rule), ['consumer-from', 'bulk-unsubscribe']);
  });

  it('under monitor delivers a consumer From and records it', async () => {
    const result = await send(world.port, 'someone@yahoo.test', ['bob@isp.test'], message({ from: 'someone@yahoo.test', to: 'bob@isp.test' }));
    assert.equal(result.data?.code, 250, JSON.stringify(result.data));
    const rules = lastRecord('someone@yahoo.test').rules as Rules;
    assert.equal(rules.verdict, 'would refuse (monitor)');
    assert.deepEqual(rules.breaches.map((b) => b.rule), ['consumer-from']);
  });

  it('delivers a consumer domain the relay holds a DKIM key for', async () => {
    const result = await send(world.port, 'someone@icloud.test', ['bob@isp.test'], message({ from: 'someone@icloud.test', to: 'bob@isp.test' }));
    assert.equal(result.data?.code, 250, JSON.stringify(result.data));
    assert.equal(lastRecord('someone@icloud.test').rules, undefined);
  });
});
