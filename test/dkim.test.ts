import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { dkimpyVerify, makeKey, type TestKey } from './harness/dkim.ts';
import { send } from './harness/send.ts';
import { message, World } from './harness/world.ts';

describe('DKIM signing', () => {
  let world: World;
  let dir: string;
  let rsa: TestKey;
  let ed: TestKey;
  let parent: TestKey;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-dkim-'));
    world = await World.start({
      config: (internet) => {
        rsa = makeKey(dir, 'example.test', 's2026', 'rsa', { dns: internet.dns });
        ed = makeKey(dir, 'example.test', 'ed2026', 'ed25519', { dns: internet.dns });
        parent = makeKey(dir, 'group.test', 'grp', 'rsa', { dns: internet.dns });
        internet.dns.add('_dmarc.example.test', { type: 'TXT', data: 'v=DMARC1; p=reject' });
        internet.dns.add('_dmarc.group.test', { type: 'TXT', data: 'v=DMARC1; p=reject' });
        // Unsigned but authenticated by SPF: every receiver wants one of the two.
        internet.dns.add('unlisted.test', { type: 'TXT', data: 'v=spf1 ip4:127.0.0.2 -all' });
        internet.dns.add('mail.group.test', { type: 'TXT', data: 'v=spf1 -all' });
        return {
          domains: {
            'example.test': { dkim: [{ selector: 's2026', key: rsa.file }, { selector: 'ed2026', key: ed.file }] },
            'group.test': { subdomains: true, dkim: [{ selector: 'grp', key: parent.file }] },
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
    world.destination('gmail.test').received.length = 0;
  });

  async function relay(raw: string | Buffer, from = 'alice@example.test') {
    const result = await send(world.port, from, ['bob@gmail.test'], raw);
    assert.equal(result.data?.code, 250, JSON.stringify(result));
    const [received] = await world.destination('gmail.test').waitForMessages(1);
    return received;
  }

  it('signs with RSA and Ed25519 at once; the receiver reports dkim=pass for both, d= the From domain, and DMARC passes', async () => {
    const received = await relay(message({ messageId: 'dual@example.test' }));
    const results = received.verdict!.raw.dkim.results;
    assert.deepEqual(results.map((r) => [r.status.result, r.signingDomain, r.selector]), [
      ['pass', 'example.test', 's2026'],
      ['pass', 'example.test', 'ed2026'],
    ]);
    assert.equal(received.verdict!.dmarc, 'pass');
    const record = await world.logs.waitFor((r) => r.msg === 'transaction' && r.messageId === '<dual@example.test>');
    assert.deepEqual(record.dkim, [
      { d: 'example.test', s: 's2026', a: 'rsa-sha256' },
      { d: 'example.test', s: 'ed2026', a: 'ed25519-sha256' },
    ]);
  });

  it('verifies with dkimpy, an independent implementation, too', async () => {
    const received = await relay(message());
    const verdict = await dkimpyVerify(received.message, [rsa, ed]);
    assert.ok(verdict.ok, verdict.output);
    assert.match(verdict.output, /signature 0: pass\nsignature 1: pass/);
  });

  it('oversigns From: a From added after signing breaks the signature', async () => {
    const received = await relay(message());
    const text = received.message.toString('latin1');
    assert.match(text, /h=from:.*:from;|h=from:[\s\S]*?:from;/);
    const tampered = Buffer.from(`From: Mallory <ceo@example.test>\r\n${text}`, 'latin1');
    const verdict = await dkimpyVerify(tampered, [rsa, ed]);
    assert.equal(verdict.ok, false, verdict.output);
  });

  const bodies: [string, () => string | Buffer][] = [
    ['an 8-bit body', () => Buffer.from(message({ body: 'Grüße aus Köln, ça va? \xe9\xe8\r\n' }).replace('Hello', 'Hallo'), 'latin1')],
    ['long header lines', () => message({ subject: `${'long subject '.repeat(60)}end` }).replace('To: ', `X-Long: ${'x'.repeat(900)}\r\nTo: `)],
    ['no body at all', () => message().split('\r\n\r\n')[0] + '\r\n'],
    ['bare LF line ends', () => message({ body: 'line one\nline two\n\n\nlast\n' }).replace(/\r\n/g, '\n')],
    ['trailing whitespace and empty lines', () => message({ body: 'a  \t b   \r\n\r\n\r\n\r\n' })],
  ];
  for (const [name, build] of bodies) {
    it(`a message with ${name} verifies after relaying (mailauth and dkimpy)`, async () => {
      const received = await relay(build());
      assert.deepEqual(received.verdict!.dkim, ['pass', 'pass'], JSON.stringify(received.verdict!.raw.dkim.results.map((r) => r.status)));
      const verdict = await dkimpyVerify(received.message, [rsa, ed]);
      assert.ok(verdict.ok, verdict.output);
    });
  }

  it('signs a subdomain with the parent key when subdomains: true (d= stays the parent; relaxed DMARC alignment passes)', async () => {
    const received = await relay(message({ from: 'news@mail.group.test' }), 'news@mail.group.test');
    const [result] = received.verdict!.raw.dkim.results;
    assert.equal(result.status.result, 'pass');
    assert.equal(result.signingDomain, 'group.test');
    assert.equal(received.verdict!.dmarc, 'pass');
  });

  it('leaves a domain without a key unsigned and says so in the record', async () => {
    await relay(message({ from: 'someone@unlisted.test', messageId: 'unsigned@unlisted.test' }), 'someone@unlisted.test');
    const record = await world.logs.waitFor((r) => r.msg === 'transaction' && r.messageId === '<unsigned@unlisted.test>');
    assert.equal(record.dkim, 'unsigned: no DKIM key for unlisted.test');
  });
});
