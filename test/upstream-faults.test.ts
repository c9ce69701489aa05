import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FaultyMx, type Act, type Moment } from './harness/faulty-mx.ts';
import { RelayProcess } from './harness/process.ts';
import { send } from './harness/send.ts';
import { Internet, message } from './harness/world.ts';

/**
 * Issue 14, part 6 (upstream faults): a destination that fails in every way a real one does,
 * at every step of the session, seen by a client of a relay process. Each message goes to a
 * healthy destination (bob@gmail.test) and to the faulty one (x@faulty.test): the client must
 * hear a temporary reply for x (at RCPT when the session failed before DATA, at the end of DATA
 * otherwise), never 250 for it, and the record must say what went wrong.
 */
const FAULTY_IP = '127.0.0.70';
const KB100 = 'x'.repeat(100 * 1024);
const LARGE_BODY = `${'x'.repeat(78)}\r\n`.repeat(128 * 1024);

interface Row {
  name: string;
  /** What the faulty destination does; unlisted moments get the ordinary answer. */
  plan: Partial<Record<Moment, Act | Act[]>>;
  /** Offer STARTTLS. */
  starttls?: boolean;
  /** A message larger than the socket buffers between relay and destination (10 MB). */
  large?: boolean;
  /** Where the client hears its 4xx for x@faulty.test. */
  at: 'RCPT' | 'DATA';
  /** What the transaction record says about the faulty destination. */
  cause: RegExp;
  /** The destination took the whole message (its final dot came) though the relay never learnt it did. */
  arrived?: boolean;
  /** ... and even acknowledged it, in a reply the relay could not take for one. */
  acknowledged?: boolean;
}

const rows: Row[] = [
  // RFC 5321 §3.1, §4.2.2: 421 at the greeting: the service is not available now.
  { name: 'greeting 421', plan: { greeting: ['421 4.3.2 faulty.test too busy, try later', 'close'] }, at: 'RCPT', cause: /faulty\.test \[127\.0\.0\.70\] said: faulty\.test too busy.*"client":"451 4\.3\.2 / },
  { name: 'greeting 554', plan: { greeting: '554 5.7.1 no SMTP service here' }, at: 'RCPT', cause: /554 5\.7\.1 no SMTP service here/ },

  // A TCP reset after each command, before its reply (and after the greeting, before anything).
  { name: 'reset after the greeting', plan: { greeting: ['220 faulty.test ESMTP', 'reset'] }, at: 'RCPT', cause: /faulty\.test \[127\.0\.0\.70\]: .*(ECONNRESET|closed)/ },
  { name: 'reset at EHLO', plan: { EHLO: 'reset' }, at: 'RCPT', cause: /(ECONNRESET|closed)/ },
  { name: 'reset at MAIL FROM', plan: { MAIL: 'reset' }, at: 'RCPT', cause: /connection (lost|closed|failed).*(ECONNRESET|closed)/ },
  { name: 'reset at RCPT TO', plan: { RCPT: 'reset' }, at: 'RCPT', cause: /connection (lost|closed|failed).*(ECONNRESET|closed)/ },
  { name: 'reset at DATA', plan: { DATA: 'reset' }, at: 'DATA', cause: /connection lost during delivery/ },
  { name: 'reset in the middle of the message', plan: { body: 'reset' }, at: 'DATA', cause: /connection lost during delivery/ },
  // The message arrived whole; the relay cannot know, so the client retries (RFC 5321 §6.1 accepts the duplicate risk).
  { name: 'reset after the final dot, before the reply', plan: { dot: 'reset' }, at: 'DATA', cause: /connection lost during delivery/, arrived: true },

  // A tarpit: the destination reads on and never answers (commandTimeout 1 s, dataTimeout 2 s).
  { name: 'no greeting', plan: { greeting: 'silence' }, at: 'RCPT', cause: /no reply to greeting within 1000 ms/ },
  { name: 'no reply to EHLO', plan: { EHLO: 'silence' }, at: 'RCPT', cause: /no reply to EHLO within 1000 ms/ },
  { name: 'no reply to MAIL FROM', plan: { MAIL: 'silence' }, at: 'RCPT', cause: /no reply to MAIL FROM within 1000 ms/ },
  { name: 'no reply to RCPT TO', plan: { RCPT: 'silence' }, at: 'RCPT', cause: /no reply to RCPT TO within 1000 ms/ },
  { name: 'no reply to DATA', plan: { DATA: 'silence' }, at: 'DATA', cause: /no reply to DATA within 1000 ms/ },
  { name: 'no reply after the final dot', plan: { dot: 'silence' }, at: 'DATA', cause: /no reply to end of DATA within 2000 ms/, arrived: true },

  // Bytes that are no SMTP reply, and replies longer than RFC 5321 §4.5.3.1.5 allows (512 octets).
  { name: 'garbage for a greeting', plan: { greeting: { raw: '\x00\xff\xfeHTTP/1.1 400 Bad Request\r\n\r\n' } }, at: 'RCPT', cause: /unparsable reply/ },
  { name: 'garbage for the EHLO reply', plan: { EHLO: { raw: 'SSH-2.0-OpenSSH_9.6\r\n' } }, at: 'RCPT', cause: /unparsable reply/ },
  { name: 'garbage for the RCPT reply', plan: { RCPT: { raw: '\x16\x03\x01\x02\x00\x01\x00\r\n' } }, at: 'RCPT', cause: /unparsable reply/ },
  { name: 'garbage after the final dot', plan: { dot: { raw: 'OK!\r\n' } }, at: 'DATA', cause: /unparsable reply/, arrived: true },
  { name: 'a 100 KB greeting line', plan: { greeting: `220 ${KB100}` }, at: 'RCPT', cause: /unparsable reply/ },
  { name: 'a 100 KB EHLO reply line', plan: { EHLO: `250 ${KB100}` }, at: 'RCPT', cause: /unparsable reply/ },
  { name: 'a 100 KB line for the RCPT reply', plan: { RCPT: `250 ${KB100}` }, at: 'RCPT', cause: /unparsable reply/ },
  { name: 'an EHLO reply of 10,000 lines', plan: { EHLO: `${'250-X-PADDING\r\n'.repeat(10_000)}250 8BITMIME` }, at: 'RCPT', cause: /unparsable reply/ },
  // A 250 the relay cannot read is no acknowledgement it may pass on.
  { name: 'a 100 KB "250" after the final dot', plan: { dot: `250 ${KB100}` }, at: 'DATA', cause: /unparsable reply/, arrived: true, acknowledged: true },

  // STARTTLS offered, and then no TLS: the handshake fails.
  { name: 'STARTTLS answered 220, then plain text', starttls: true, plan: { STARTTLS: ['220 2.0.0 ready', { raw: 'this is not a TLS server hello\r\n' }] }, at: 'RCPT', cause: /TLS|tls|handshake|wrong version/ },
  { name: 'STARTTLS answered 220, then a reset', starttls: true, plan: { STARTTLS: ['220 2.0.0 ready', 'reset'] }, at: 'RCPT', cause: /TLS|tls|handshake|ECONNRESET/ },

  // Premature replies: during the message (large, so that it is still on its way), at once
  // with the reply that was asked for, and before anyone asked.
  { name: '250 in the middle of the message', large: true, plan: { body: ['250 2.0.0 queued already', 'stall'] }, at: 'DATA', cause: /accepted the message before it was sent/ },
  { name: '451 in the middle of the message', large: true, plan: { body: ['451 4.3.0 cannot take it now', 'stall'] }, at: 'DATA', cause: /451 4\.3\.0 cannot take it now/ },
  { name: '354 and the final 250 at once, before the message', plan: { DATA: ['354 go ahead', '250 2.0.0 queued'] }, at: 'DATA', cause: /reply without a command: 250 2\.0\.0 queued/ },
  { name: 'a reply nobody asked for after the greeting', plan: { greeting: ['220 faulty.test ESMTP', '250 2.0.0 unasked'] }, at: 'RCPT', cause: /reply without a command: 250 2\.0\.0 unasked/ },
  { name: 'two replies to EHLO', plan: { EHLO: ['250 faulty.test', '250 2.0.0 unasked'] }, at: 'RCPT', cause: /reply without a command: 250 2\.0\.0 unasked/ },
  { name: 'two replies to MAIL FROM', plan: { MAIL: ['250 2.1.0 ok', '250 2.1.0 ok again'] }, at: 'RCPT', cause: /reply without a command: 250 2\.1\.0 ok again/ },
  // It stops reading: the relay's writes block (dataTimeout 2 s for each).
  { name: 'the destination stops reading in the middle of the message', large: true, plan: { body: 'stall' }, at: 'DATA', cause: /did not take message data within 2000 ms/ },
];

describe('upstream faults, seen by a client of a relay process', () => {
  let internet: Internet;
  let faulty: FaultyMx;
  let relay: RelayProcess;
  let dir: string;

  before(async () => {
    internet = await Internet.start();
    internet.dns.add('faulty.test', { type: 'MX', data: { preference: 10, exchange: 'mx.faulty.test' } });
    internet.dns.add('mx.faulty.test', { type: 'A', data: FAULTY_IP });
    faulty = await FaultyMx.start(FAULTY_IP, internet.mxPort);
    dir = mkdtempSync(path.join(tmpdir(), 'upstream-faults-'));
    relay = await RelayProcess.start(
      path.join(dir, 'relay.yaml'),
      internet.relayConfig({
        // Short deadlines for the tarpits; shaping off, so one row's 421 pauses nobody for the next.
        delivery: internet.deliverySettings({ connectTimeout: '1s', commandTimeout: '1s', dataTimeout: '2s', shaping: false, pool: { maxIdle: 0 } }),
      }),
    );
  });
  after(async () => {
    await relay?.stop();
    await faulty?.close();
    await internet?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  for (const row of rows) {
    it(`${row.name}: 4xx at ${row.at} for that destination only, nothing acknowledged that did not arrive`, async () => {
      faulty.plan = (moment) => row.plan[moment];
      faulty.starttls = row.starttls ?? false;
      faulty.accepted.length = 0;
      faulty.completed.length = 0;
      const gmail = internet.destination('gmail.test');
      const before = gmail.received.length;
      const messageId = `${row.name.replace(/\W+/g, '-')}@example.test`;
      const from = relay.records.length;

      const result = await send(relay.port, 'alice@example.test', ['bob@gmail.test', 'x@faulty.test'], message({ to: 'bob@gmail.test, x@faulty.test', messageId, ...(row.large ? { body: LARGE_BODY } : {}) }));

      assert.equal(result.rcpts[0].code, 250, JSON.stringify(result));
      if (row.at === 'RCPT') {
        assert.equal(Math.floor(result.rcpts[1].code / 100), 4, `RCPT for the faulty destination: ${JSON.stringify(result.rcpts[1])}`);
        // The one accepted recipient got it: 250 is the truth here.
        assert.equal(result.data?.code, 250, JSON.stringify(result.data));
      } else {
        assert.equal(result.rcpts[1].code, 250, JSON.stringify(result.rcpts[1]));
        assert.equal(result.data?.code, 451, JSON.stringify(result.data));
        assert.match(result.data!.text, /reached 1 of 2 recipients/);
      }
      // RFC 3463 §3.1: the enhanced code's class is the reply's.
      assert.match((row.at === 'RCPT' ? result.rcpts[1] : result.data!).text, /^4\.\d{1,3}\.\d{1,3} /);
      assert.equal(gmail.received.length, before + 1, 'the healthy destination got it');
      assert.equal(faulty.completed.length, row.arrived ? 1 : 0, 'the faulty destination got the whole message');
      assert.equal(faulty.accepted.length, row.acknowledged ? 1 : 0, 'the faulty destination acknowledged it');

      const record = await relay.waitFor((r) => r.msg === 'transaction' && r.messageId === `<${messageId}>`, from);
      const recipients = record.recipients as { address: string; result: string }[];
      assert.deepEqual(recipients.map((r) => [r.address, r.result]), [['bob@gmail.test', 'delivered'], ['x@faulty.test', 'deferred']]);
      const said = JSON.stringify({ upstream: (record.upstream as { destination: string }[]).filter((u) => JSON.stringify(u).includes('faulty')), recipient: recipients[1] });
      assert.match(said, row.cause, said);
      // The relay closed what it had with the faulty destination; nothing hangs on.
      await faulty.idle();
    });
  }

  it('still delivers to the destination once it behaves again', async () => {
    faulty.plan = () => undefined;
    faulty.accepted.length = 0;
    const result = await send(relay.port, 'alice@example.test', ['x@faulty.test'], message({ to: 'x@faulty.test' }));
    assert.equal(result.data?.code, 250, JSON.stringify(result));
    assert.equal(faulty.accepted.length, 1);
    assert.equal(relay.child.exitCode, null);
  });
});

describe('a destination that offers PIPELINING and ends the session at MAIL FROM', () => {
  let internet: Internet;
  let relay: RelayProcess;
  let dir: string;
  before(async () => {
    // smtp-server offers PIPELINING: MAIL FROM and the first RCPT TO go in one write.
    internet = await Internet.start({ destinations: [{ domain: 'gmail.test', mx: [{ name: 'mx.gmail.test', ip: '127.0.0.10' }], script: { mailFrom: () => ({ code: 421, message: '4.3.2 Service shutting down' }) } }] });
    dir = mkdtempSync(path.join(tmpdir(), 'relay-pipelined-'));
    relay = await RelayProcess.start(path.join(dir, 'relay.yaml'), internet.relayConfig());
  });
  after(async () => {
    await relay.stop();
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers the RCPT 4xx and stays up: the waiter for the unanswered RCPT is not left rejected', async () => {
    const first = await send(relay.port, 'alice@example.test', ['bob@gmail.test'], message());
    assert.ok(first.rcpts[0].code >= 400 && first.rcpts[0].code < 500, JSON.stringify(first.rcpts[0]));
    internet.destination('gmail.test').script = {};
    const second = await send(relay.port, 'alice@example.test', ['bob@gmail.test'], message());
    assert.equal(second.data?.code, 250, JSON.stringify(second));
    assert.equal(relay.child.exitCode, null);
  });
});
