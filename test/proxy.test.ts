import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { RawClient } from './harness/client.ts';
import { send } from './harness/send.ts';
import { CORP, message, World } from './harness/world.ts';

const gmailRecipient = 'bob@gmail.test';
const outlookRecipient = 'carol@outlook.test';

describe('proxy transaction across destinations', () => {
  let world: World;
  before(async () => {
    world = await World.start();
  });
  after(async () => world.close());
  beforeEach(() => {
    for (const destination of world.destinations.values()) {
      destination.received.length = 0;
      destination.script = {};
    }
  });

  it('delivers one transaction to two destinations, once each, in one upstream transaction each', async () => {
    const body = message({ to: `${gmailRecipient}, ${outlookRecipient}` });
    const result = await send(world.port, 'alice@example.test', [gmailRecipient, outlookRecipient], body);
    assert.equal(result.data?.code, 250, JSON.stringify(result));
    for (const [domain, recipient] of [['gmail.test', gmailRecipient], ['outlook.test', outlookRecipient]]) {
      const destination = world.destination(domain);
      assert.equal(destination.received.length, 1, `${domain} received once`);
      assert.deepEqual(destination.received[0].envelope.rcptTo, [recipient]);
      assert.ok(destination.received[0].message.toString().endsWith(body));
      assert.equal(destination.received[0].secure, true, 'STARTTLS was used upstream');
    }
  });

  it('answers 451 when destinations disagree 250/451, and the retry reaches only the one missing', async () => {
    let refuse = true;
    world.destination('outlook.test').script = { data: () => (refuse ? { code: 451, message: '4.7.500 Server busy. Please try again later' } : undefined) };
    const body = message({ subject: 'disagree temporary' });
    const first = await send(world.port, 'alice@example.test', [gmailRecipient, outlookRecipient], body);
    assert.equal(first.data?.code, 451, JSON.stringify(first.data));
    assert.match(first.data!.text, /^4\.7\.500 /);
    assert.match(first.data!.text, /reached 1 of 2 recipients/);
    assert.equal(world.destination('gmail.test').received.length, 1);
    assert.equal(world.destination('outlook.test').received.length, 0);

    refuse = false;
    const retry = await send(world.port, 'alice@example.test', [gmailRecipient, outlookRecipient], body);
    assert.equal(retry.data?.code, 250, JSON.stringify(retry.data));
    assert.equal(world.destination('gmail.test').received.length, 1, 'gmail got no duplicate');
    assert.equal(world.destination('outlook.test').received.length, 1, 'outlook got the retry');
  });

  it('answers 250 when destinations disagree 250/550, and the sender gets a status notification naming only the refused recipient', async () => {
    world.destination('outlook.test').script = { data: () => ({ code: 550, message: '5.7.1 Message rejected as spam by Content Filtering' }) };
    const body = message({ subject: 'disagree permanent' });
    const result = await send(world.port, 'alice@example.test', [gmailRecipient, outlookRecipient], body);
    assert.equal(result.data?.code, 250, JSON.stringify(result.data));
    assert.equal(world.destination('gmail.test').received.length, 1);
    const [notification] = await world.destination('example.test').waitForMessages(1);
    assert.deepEqual(notification.envelope, { mailFrom: '', rcptTo: ['alice@example.test'] });
    const text = notification.message.toString();
    assert.match(text, /Content-Type: multipart\/report; report-type=delivery-status/);
    assert.match(text, /Final-Recipient: rfc822; carol@outlook\.test/);
    assert.match(text, /Status: 5\.7\.1/);
    assert.match(text, /Diagnostic-Code: smtp; 550 5\.7\.1 .*Message rejected as spam by Content Filtering/);
    assert.doesNotMatch(text, /Final-Recipient: rfc822; bob@gmail\.test/);
    assert.match(text, /Subject: disagree permanent/, 'the original headers are attached');

    // The retry of the same message bounces nobody twice and duplicates nothing.
    const retry = await send(world.port, 'alice@example.test', [gmailRecipient, outlookRecipient], body);
    assert.equal(retry.data?.code, 250);
    assert.equal(world.destination('gmail.test').received.length, 1);
    assert.equal(world.destination('example.test').received.length, 1);
  });

  it('sends no duplicate when the client lost the connection after every destination accepted', async () => {
    const body = message({ subject: 'connection cut' });
    const { client } = await RawClient.connect(world.port);
    await client.command('EHLO corp-ex01.example.test');
    await client.command('MAIL FROM:<alice@example.test>');
    await client.command(`RCPT TO:<${gmailRecipient}>`);
    await client.command(`RCPT TO:<${outlookRecipient}>`);
    await client.dataWithoutReply(body);
    await world.destination('gmail.test').waitForMessages(1);
    await world.destination('outlook.test').waitForMessages(1);
    client.destroy();
    await world.logs.waitFor((r) => r.msg === 'transaction' && (r.envelope as { rcptTo: string[] }).rcptTo.length === 2 && r.outcome === 'accepted' && (r.recipients as { result: string }[]).every((x) => x.result === 'delivered'));

    const retry = await send(world.port, 'alice@example.test', [gmailRecipient, outlookRecipient], body);
    assert.equal(retry.data?.code, 250);
    assert.equal(world.destination('gmail.test').received.length, 1);
    assert.equal(world.destination('outlook.test').received.length, 1);
  });

  it("passes a destination's 550 5.1.1 for one recipient to the client and delivers the others", async () => {
    world.destination('gmail.test').script = { rcptTo: (address) => (address === 'nobody@gmail.test' ? { code: 550, message: "5.1.1 The email account that you tried to reach does not exist" } : undefined) };
    const result = await send(world.port, 'alice@example.test', ['nobody@gmail.test', gmailRecipient, outlookRecipient], message());
    assert.equal(result.rcpts[0].code, 550);
    assert.match(result.rcpts[0].text, /^5\.1\.1 mx\.gmail\.test \[127\.0\.0\.10\] said: The email account that you tried to reach does not exist \(relay id [\w-]+\)$/);
    assert.equal(result.rcpts[1].code, 250);
    assert.equal(result.rcpts[2].code, 250);
    assert.equal(result.data?.code, 250);
    assert.deepEqual(world.destination('gmail.test').received[0].envelope.rcptTo, [gmailRecipient]);
    assert.equal(world.destination('outlook.test').received.length, 1);
  });

  it("passes a destination's 452 4.2.2 for one recipient as a temporary failure", async () => {
    world.destination('gmail.test').script = { rcptTo: (address) => (address === 'full@gmail.test' ? { code: 452, message: '4.2.2 The email account that you tried to reach is over quota' } : undefined) };
    const result = await send(world.port, 'alice@example.test', ['full@gmail.test', gmailRecipient], message());
    assert.equal(result.rcpts[0].code, 452);
    assert.match(result.rcpts[0].text, /^4\.2\.2 .*over quota/);
    assert.equal(result.data?.code, 250);
    assert.deepEqual(world.destination('gmail.test').received[0].envelope.rcptTo, [gmailRecipient]);
  });

  it('answers 4xx when the destination closes the connection in the middle of DATA', async () => {
    world.destination('gmail.test').script = { dropMidData: true };
    const result = await send(world.port, 'alice@example.test', [gmailRecipient], message({ body: `${'x'.repeat(78)}\r\n`.repeat(2500) }));
    assert.equal(result.data?.code, 451, JSON.stringify(result.data));
    assert.match(result.data!.text, /^4\.4\.2 .*connection lost/);
  });

  it('refuses a recipient of a domain with a null MX with 556 5.1.10', async () => {
    world.dns.add('nomail.test', { type: 'MX', data: { preference: 0, exchange: '.' } });
    const result = await send(world.port, 'alice@example.test', ['x@nomail.test'], message());
    assert.equal(result.rcpts[0].code, 556);
    assert.match(result.rcpts[0].text, /^5\.1\.10 nomail\.test accepts no mail/);
  });

  it('defers a recipient whose MX lookup fails with SERVFAIL (451 4.4.3), never a permanent refusal', async () => {
    world.dns.fault('broken.test', 'MX', 'servfail');
    const result = await send(world.port, 'alice@example.test', ['x@broken.test'], message());
    assert.equal(result.rcpts[0].code, 451);
    assert.match(result.rcpts[0].text, /^4\.4\.3 /);
  });

  it('writes one transaction record with what an admin needs', async () => {
    const result = await send(world.port, 'alice@example.test', [gmailRecipient], message({ messageId: 'record-check@example.test' }));
    assert.equal(result.data?.code, 250);
    const record = await world.logs.waitFor((r) => r.msg === 'transaction' && r.messageId === '<record-check@example.test>');
    assert.deepEqual(record.client, { ip: '127.0.0.1', helo: 'corp-ex01.example.test', tls: false });
    assert.deepEqual(record.envelope, { mailFrom: 'alice@example.test', rcptTo: [gmailRecipient] });
    assert.deepEqual(record.egress, { ip: '127.0.0.2', helo: 'relay-out.example.test', verified: true });
    const [upstream] = record.upstream as Record<string, unknown>[];
    assert.equal(upstream.mxHost, 'mx.gmail.test');
    assert.equal(upstream.mxIp, '127.0.0.10');
    assert.match(String((upstream.tls as { version: string }).version), /^TLSv1\.[23]$/);
    assert.match(String(upstream.data), /^250 /);
    assert.equal(record.outcome, 'accepted');
    assert.equal(typeof record.size, 'number');
    assert.equal(typeof record.ms, 'number');
    assert.deepEqual((record.recipients as { result: string }[]).map((r) => r.result), ['delivered']);
  });
});

describe('next MX and unreachable destinations', () => {
  let world: World;
  before(async () => {
    world = await World.start({
      destinations: [{ domain: 'gmail.test', mx: [{ name: 'mx2.gmail.test', ip: '127.0.0.21' }] }, CORP],
      deadMx: [
        { domain: 'gmail.test', name: 'mx1.gmail.test', ip: '127.0.0.20', preference: 5 },
        { domain: 'down.test', name: 'mx1.down.test', ip: '127.0.0.30', preference: 10 },
        { domain: 'down.test', name: 'mx2.down.test', ip: '127.0.0.31', preference: 20 },
      ],
    });
  });
  after(async () => world.close());

  it('delivers to the second MX when the first refuses connections', async () => {
    const result = await send(world.port, 'alice@example.test', [gmailRecipient], message());
    assert.equal(result.data?.code, 250, JSON.stringify(result));
    assert.equal(world.destination('gmail.test').received.length, 1);
  });

  it('answers 451 4.4.1 when every MX is down, and delivers nothing', async () => {
    const result = await send(world.port, 'alice@example.test', ['x@down.test'], message());
    assert.equal(result.rcpts[0].code, 451);
    assert.match(result.rcpts[0].text, /^4\.4\.1 no mail server of the destination could be reached \(mx1\.down\.test \[127\.0\.0\.30\]: .*mx2\.down\.test/);
    assert.equal(result.data, undefined);
  });
});

describe('routes and the bounce route', () => {
  let world: World;
  before(async () => {
    world = await World.start({
      destinations: [
        { domain: 'outlook.test', mx: [{ name: 'mx.outlook.test', ip: '127.0.0.11' }] },
        { domain: 'partner-relay.test', mx: [{ name: 'smtp.partner-relay.test', ip: '127.0.0.13' }] },
        { domain: 'corp-bounces.test', mx: [{ name: 'exchange.corp-bounces.test', ip: '127.0.0.14' }] },
      ],
      config: (internet) => ({
        delivery: {
          port: internet.mxPort,
          routes: [{ domains: ['*.partner.test', 'partner.test'], host: 'smtp.partner-relay.test', port: internet.mxPort }],
          bounceRoute: { host: '127.0.0.14', port: internet.mxPort },
        },
      }),
    });
  });
  after(async () => world.close());

  it('sends a routed domain and its subdomains to the route instead of their MX', async () => {
    const result = await send(world.port, 'alice@example.test', ['p@partner.test', 'q@eu.partner.test'], message());
    assert.equal(result.data?.code, 250, JSON.stringify(result));
    const [received] = await world.destination('partner-relay.test').waitForMessages(1);
    assert.deepEqual(received.envelope.rcptTo, ['p@partner.test', 'q@eu.partner.test'], 'one session for the route');
  });

  it('sends status notifications to the bounce route', async () => {
    world.destination('outlook.test').script = { data: () => ({ code: 554, message: '5.7.1 Service unavailable; Client host blocked using Spamhaus' }) };
    const result = await send(world.port, 'alice@example.test', ['p@partner.test', 'carol@outlook.test'], message({ subject: 'bounce route' }));
    assert.equal(result.data?.code, 250);
    const [notification] = await world.destination('corp-bounces.test').waitForMessages(1);
    assert.deepEqual(notification.envelope, { mailFrom: '', rcptTo: ['alice@example.test'] });
    assert.match(notification.message.toString(), /Diagnostic-Code: smtp; 554 5\.7\.1 Service unavailable; Client host blocked using Spamhaus/);
  });

  it('answers 451 instead of 250 when the status notification cannot be sent', async () => {
    world.destination('outlook.test').script = { data: () => ({ code: 550, message: '5.7.1 refused' }) };
    world.destination('corp-bounces.test').script = { rcptTo: () => ({ code: 450, message: '4.2.1 mailbox busy' }) };
    const result = await send(world.port, 'alice@example.test', ['p@partner.test', 'carol@outlook.test'], message({ subject: 'no notification' }));
    assert.equal(result.data?.code, 451);
    assert.match(result.data!.text, /reached 1 of 2 recipients; send it again .*; <carol@outlook\.test>: 451 4\.3\.0 refused by mx\.outlook\.test .* and the status notification could not be sent/);
  });
});
