import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { makeKey } from './harness/dkim.ts';
import { send } from './harness/send.ts';
import { message, World, type Internet } from './harness/world.ts';

const EGRESS = '127.0.0.2';
const LIMITED = '127.0.0.60';

interface PreflightRecord {
  verdict: string;
  reasons?: string[];
  prediction: { spf: { result: string }; dkim: { result: string }[]; dmarc: { result: string; policy?: string }; authenticationResults: string };
}

/** Sending domains with the DNS each scenario needs; keys are made in `dir`. */
function zones(internet: Internet, dir: string) {
  const dns = internet.dns;
  const spf = (domain: string, authorizes: boolean) => dns.add(domain, { type: 'TXT', data: `v=spf1 ip4:${authorizes ? EGRESS : '192.0.2.1'} -all` });
  const dmarc = (domain: string, record = 'v=DMARC1; p=reject') => dns.add(`_dmarc.${domain}`, { type: 'TXT', data: record });
  const key = (domain: string) => [{ selector: 'k1', key: makeKey(dir, domain, 'k1', 'rsa', { dns }).file }];

  spf('aligned.test', true);
  dmarc('aligned.test');
  for (const domain of ['nospf.test', 'nospf-monitor.test']) {
    spf(domain, false);
    dmarc(domain);
  }
  for (const domain of ['dkimonly.test', 'dkimonly-strict.test']) {
    spf(domain, false);
    dmarc(domain);
  }
  spf('bounces.sub.test', true);
  dns.add('sub.test', { type: 'A', data: '192.0.2.9' });
  dmarc('sub.test');
  spf('bounces.strictsub.test', true);
  dns.add('strictsub.test', { type: 'A', data: '192.0.2.9' });
  dmarc('strictsub.test', 'v=DMARC1; p=reject; aspf=s');
  dns.fault('flaky.test', 'TXT', 'servfail');
  dmarc('flaky.test');

  return {
    'aligned.test': { dkim: key('aligned.test') },
    'nospf.test': { policy: 'enforce' },
    'nospf-monitor.test': { policy: 'monitor' },
    'dkimonly.test': { dkim: key('dkimonly.test') },
    'dkimonly-strict.test': { require: ['spf', 'dkim'], dkim: key('dkimonly-strict.test') },
    'strictsub.test': { policy: 'monitor' },
  };
}

describe('authentication preflight', () => {
  let world: World;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-preflight-'));
    world = await World.start({
      destinations: [{ domain: 'gmail.test', mx: [{ name: 'mx.gmail.test', ip: '127.0.0.10' }] }],
      config: (internet) => ({
        domains: zones(internet, dir),
        clients: { networks: ['127.0.0.1/32', { network: `${LIMITED}/32`, senderDomains: ['aligned.test'] }] },
      }),
    });
  });
  after(async () => {
    await world.close();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    world.destination('gmail.test').received.length = 0;
  });

  const gmail = () => world.destination('gmail.test');
  async function relay(from: string, body = message({ from, messageId: `${Math.random().toString(36).slice(2)}@${from.split('@')[1]}` }), envelopeFrom = from) {
    const result = await send(world.port, envelopeFrom, ['bob@gmail.test'], body);
    const id = /<([^>]+)>/.exec(/^Message-ID: .*$/m.exec(body)?.[0] ?? '')?.[1];
    const record = result.data ? await world.logs.waitFor((r) => r.msg === 'transaction' && (id === undefined || r.messageId === `<${id}>`)) : undefined;
    return { result, record, preflight: record?.preflight as PreflightRecord | undefined };
  }

  it('delivers an aligned domain, and the receiver concludes what the relay predicted', async () => {
    const { result, preflight } = await relay('alice@aligned.test');
    assert.equal(result.data?.code, 250, JSON.stringify(result));
    const [received] = await gmail().waitForMessages(1);
    const verdict = received.verdict!;
    assert.deepEqual([verdict.spf, verdict.dkim, verdict.dmarc], ['pass', ['pass'], 'pass']);
    assert.deepEqual([preflight!.prediction.spf.result, preflight!.prediction.dkim.map((d) => d.result), preflight!.prediction.dmarc.result], [verdict.spf, verdict.dkim, verdict.dmarc]);
    assert.equal(preflight!.verdict, 'pass');
    assert.match(preflight!.prediction.authenticationResults, /dkim=pass .*header\.s=k1.*spf=pass .*dmarc=pass/);
  });

  it('refuses a domain whose SPF omits the egress IP and that has no DKIM key, naming the ip4: to add; nothing arrives', async () => {
    const { result, preflight } = await relay('alice@nospf.test');
    assert.equal(result.data?.code, 550);
    assert.match(result.data!.text, /^5\.7\.26 DMARC of nospf\.test would fail \(p=reject\): the SPF record of nospf\.test \("v=spf1 ip4:192\.0\.2\.1 -all"\) does not authorize 127\.0\.0\.2 \(fail\): add ip4:127\.0\.0\.2 to it; no DKIM key is configured for nospf\.test/);
    assert.equal(preflight!.verdict, 'refused');
    assert.equal(gmail().received.length, 0);
  });

  it('relays the same failure under monitor and flags it in the record', async () => {
    const { result, preflight } = await relay('alice@nospf-monitor.test');
    assert.equal(result.data?.code, 250);
    assert.equal(gmail().received.length, 1);
    assert.equal(preflight!.verdict, 'would be refused (monitor)');
    assert.equal(preflight!.prediction.dmarc.result, 'fail');
    assert.match(preflight!.reasons![0], /add ip4:127\.0\.0\.2/);
  });

  it('passes require [dmarc] with DKIM aligned and SPF failing', async () => {
    const { result, preflight } = await relay('alice@dkimonly.test');
    assert.equal(result.data?.code, 250, JSON.stringify(result));
    assert.equal(preflight!.prediction.spf.result, 'fail');
    assert.equal(preflight!.prediction.dmarc.result, 'pass');
  });

  it('refuses the same under require [spf, dkim], at MAIL FROM', async () => {
    const { result } = await relay('alice@dkimonly-strict.test');
    assert.equal(result.mail.code, 550);
    assert.match(result.mail.text, /^5\.7\.23 SPF would fail at the receiver: the SPF record of dkimonly-strict\.test .* add ip4:127\.0\.0\.2/);
    assert.equal(gmail().received.length, 0);
  });

  it('aligns a MAIL FROM subdomain with From relaxedly, and predicts a failure with aspf=s', async () => {
    const relaxed = await relay('alice@sub.test', undefined, 'bounce@bounces.sub.test');
    assert.equal(relaxed.result.data?.code, 250, JSON.stringify(relaxed.result));
    assert.equal(relaxed.preflight!.prediction.dmarc.result, 'pass');
    const strict = await relay('alice@strictsub.test', undefined, 'bounce@bounces.strictsub.test');
    assert.equal(strict.preflight!.prediction.spf.result, 'pass');
    assert.equal(strict.preflight!.prediction.dmarc.result, 'fail');
    assert.match(strict.preflight!.reasons![0], /SPF passes for bounces\.strictsub\.test but is not aligned with strictsub\.test/);
  });

  it('answers 451 4.4.3 when the SPF lookup meets SERVFAIL, and delivers nothing', async () => {
    const { result } = await relay('alice@flaky.test');
    const code = result.mail.code === 250 ? result.data?.code : result.mail.code;
    assert.equal(code, 451, JSON.stringify(result));
    assert.match((result.data ?? result.mail).text, /^4\.4\.3 /);
    assert.equal(gmail().received.length, 0);
  });

  it('refuses two From fields with 5.6.0', async () => {
    const body = message({ from: 'alice@aligned.test' }).replace('To: ', 'From: Mallory <m@aligned.test>\r\nTo: ');
    const { result } = await relay('alice@aligned.test', body);
    assert.equal(result.data?.code, 550);
    assert.match(result.data!.text, /^5\.6\.0 the message has 2 From header fields/);
    assert.equal(gmail().received.length, 0);
  });

  it('adds a missing Date and Message-ID before signing, and the signature still passes', async () => {
    const body = message({ from: 'alice@aligned.test' }).replace(/^Date: .*\r\n/m, '').replace(/^Message-ID: .*\r\n/m, '');
    const { result } = await relay('alice@aligned.test', body);
    assert.equal(result.data?.code, 250);
    const [received] = await gmail().waitForMessages(1);
    const text = received.message.toString();
    assert.match(text, /^Date: \w{3}, \d+ \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r$/m);
    assert.match(text, /^Message-ID: <[0-9a-f]{32}@aligned\.test>\r$/m);
    assert.deepEqual(received.verdict!.dkim, ['pass']);
  });

  it('refuses a From outside the sender domains of a limited client, and delivers nothing', async () => {
    const result = await send(world.port, 'alice@aligned.test', ['bob@gmail.test'], message({ from: 'ceo@other.test' }), { localAddress: LIMITED });
    assert.equal(result.data?.code, 550);
    assert.match(result.data!.text, /^5\.7\.1 127\.0\.0\.60 may not send as ceo@other\.test \(From\)/);
    const envelope = await send(world.port, 'ceo@other.test', ['bob@gmail.test'], message({ from: 'ceo@other.test' }), { localAddress: LIMITED });
    assert.equal(envelope.mail.code, 550);
    assert.equal(gmail().received.length, 0);
  });
});

describe('header hygiene: internal Received fields', () => {
  let world: World;
  before(async () => {
    world = await World.start({ destinations: [{ domain: 'gmail.test', mx: [{ name: 'mx.gmail.test', ip: '127.0.0.10' }] }], config: { hygiene: { removeReceived: true } } });
  });
  after(async () => world.close());

  it('removes the Received fields the internal servers added, keeping the relay\'s own', async () => {
    const body = `Received: from pc17.corp.example (10.1.2.17)\r\n\tby corp-ex01.corp.example; Mon, 23 Nov 2026 08:59:00 +0000\r\n${message()}`;
    const result = await send(world.port, 'alice@example.test', ['bob@gmail.test'], body);
    assert.equal(result.data?.code, 250);
    const [received] = await world.destination('gmail.test').waitForMessages(1);
    const text = received.message.toString();
    assert.equal(text.match(/^Received:/gm)?.length, 1);
    assert.match(text, /^Received: from corp-ex01\.example\.test/);
    assert.doesNotMatch(text, /pc17\.corp\.example/);
  });
});
