import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, beforeEach, describe, it } from 'node:test';
import fc from 'fast-check';
import { BodyScan } from '../src/message/index.ts';
import { printable, toSmtpError, wrapReplyText } from '../src/smtp/index.ts';
import { RawClient, type ClientReply } from './harness/client.ts';
import { message, World } from './harness/world.ts';

/** An input that once passed the relay (issue 14, part 5), as it is kept. */
const fixture = (name: string): Buffer => readFileSync(new URL(`./fixtures/malformed/${name}.eml`, import.meta.url));

/** RFC 5321 §4.2: every octet of a reply line is printable US-ASCII (the client reads latin1: one character an octet). */
function assertPrintable(lines: string[]): void {
  for (const line of lines) assert.match(line, /^[\x20-\x7e]*$/, `reply line ${JSON.stringify(line)} carries an octet outside printable ASCII`);
}

describe('malformed mail (issue 14 part 5): refused at the end of DATA, before any destination has it', () => {
  let world: World;
  before(async () => {
    world = await World.start();
  });
  after(async () => {
    await world.close();
  });
  beforeEach(() => {
    world.destination('gmail.test').received.length = 0;
  });

  /**
   * On one connection, from a raw client: the fixture (with SMTPUTF8 on MAIL FROM when asked),
   * then a well-formed message, each to bob@gmail.test. What the client heard for the fixture,
   * its transaction record, and the Message-IDs of what the destination received meanwhile.
   */
  async function relay(name: string, options: { smtputf8?: boolean } = {}) {
    const destination = world.destination('gmail.test');
    const before = destination.received.length;
    const { client } = await RawClient.connect(world.port);
    try {
      await client.command('EHLO corp-ex01.example.test');
      const mark = world.logs.records.length;
      const transaction = async (body: Buffer | string, smtputf8: boolean): Promise<ClientReply> => {
        assert.equal((await client.command(`MAIL FROM:<alice@example.test>${smtputf8 ? ' SMTPUTF8' : ''}`)).code, 250);
        assert.equal((await client.command('RCPT TO:<bob@gmail.test>')).code, 250);
        return (await client.data(body)).final!;
      };
      const reply = await transaction(fixture(name), options.smtputf8 ?? false);
      const record = await world.logs.waitFor((r) => r.msg === 'transaction' && world.logs.records.indexOf(r) >= mark);
      // The connection is still the client's: its next transaction goes through.
      const nextId = `next-${name}-${Math.random().toString(36).slice(2)}@example.test`;
      const next = await transaction(message({ messageId: nextId }), false);
      assert.equal(next.code, 250, next.lines.join(' | '));
      const received = (await destination.waitForMessages(before + (reply.code === 250 ? 2 : 1))).slice(before);
      const ids = received.map((m) => /^Message-ID: <(.*)>\r$/m.exec(m.message.toString('latin1'))?.[1]);
      return { reply, record, received, ids, nextId };
    } finally {
      await client.quit();
    }
  }

  /** Refused with 550 5.6.0 and `text`, in printable ASCII, recorded as such, and nothing but the next message arrived. */
  async function assertRefused(name: string, text: RegExp, options: { smtputf8?: boolean } = {}) {
    const { reply, record, ids, nextId } = await relay(name, options);
    assert.equal(reply.code, 550, reply.lines.join(' | '));
    assert.match(reply.text, /^5\.6\.0 /);
    assert.match(reply.lines.join(' '), text);
    assertPrintable(reply.lines);
    assert.equal(record.outcome, 'permanent');
    assert.equal(record.reply, reply.lines.join('\r\n'), 'the record names the reply as the client got it');
    assert.deepEqual((record.recipients as { result: string }[]).map((r) => r.result), ['refused']);
    assert.deepEqual(ids, [nextId], 'the destination got only the well-formed message that followed');
    return reply;
  }

  /** Accepted and delivered, the fixture's fields and body as they were sent, below those the relay adds. */
  async function assertAccepted(name: string, options: { smtputf8?: boolean } = {}) {
    const { reply, received, ids, nextId } = await relay(name, options);
    assert.equal(reply.code, 250, reply.lines.join(' | '));
    assert.deepEqual(ids, [name + '@example.test', nextId]);
    const sent = fixture(name);
    assert.ok(received[0].message.subarray(-sent.length).equals(sent), 'the message left as it came, below the added fields');
    return received[0];
  }

  it('refuses a NUL byte in a header field, naming the field', async () => {
    await assertRefused('nul-in-header', /header field "Subject" contains a NUL byte/);
  });

  it('refuses a NUL byte in the body', async () => {
    await assertRefused('nul-in-body', /the body contains a NUL byte/);
  });

  it('refuses a header line of 900 KB, naming the field and its length', async () => {
    await assertRefused('header-line-900k', /header field "X-Long" has a line of 921600 octets; RFC 5322 section 2.1.1 allows at most 998/);
  });

  it('refuses a header line of 999 octets and accepts one of 998 (RFC 5322 §2.1.1)', async () => {
    await assertRefused('header-line-999', /header field "X-Long" has a line of 999 octets/);
    await assertAccepted('header-line-998');
  });

  it('refuses a body line of 999 octets and accepts one of 998 (RFC 5321 §4.5.3.1.6: DKIM would not survive its folding)', async () => {
    await assertRefused('body-line-999', /the body has a line longer than 998 octets .* quoted-printable or base64/);
    await assertAccepted('body-line-998');
  });

  it('refuses an 8-bit Subject from a client that did not use SMTPUTF8, naming "Subject"', async () => {
    await assertRefused('subject-utf8', /header field "Subject" contains 8-bit bytes but the client did not use SMTPUTF8 \(RFC 6532\)/);
  });

  it('accepts a UTF-8 Subject under SMTPUTF8 (the destination offers SMTPUTF8, as smtp-server does)', async () => {
    const delivered = await assertAccepted('subject-utf8', { smtputf8: true });
    assert.match(delivered.message.toString('utf8'), /^Subject: Grüße aus Zürich — ünïcödé\r$/m);
  });

  it('refuses invalid UTF-8 in the From display name without echoing a byte of it, with SMTPUTF8 or without', async () => {
    const without = await assertRefused('from-invalid-utf8', /header field "From" contains 8-bit bytes but the client did not use SMTPUTF8/);
    const withSmtputf8 = await assertRefused('from-invalid-utf8', /header field "From" is not valid UTF-8, which SMTPUTF8 requires \(RFC 6532 section 3\.2\)/, { smtputf8: true });
    for (const reply of [without, withSmtputf8]) assert.doesNotMatch(reply.lines.join(' '), /Al.x|Mart.n/, 'nothing of the display name is echoed');
  });
});

describe('the reply layer writes printable US-ASCII only (RFC 5321 §4.2)', () => {
  // Text from anywhere: raw octets read as latin1 (a header), any Unicode (a destination's reply), CR LF.
  const anyText = fc.oneof(fc.string({ unit: 'binary' }), fc.string({ unit: fc.integer({ min: 0, max: 0xff }).map((c) => String.fromCharCode(c)) }), fc.string({ unit: fc.constantFrom('\r', '\n', '\0', 'a', ' ', 'é', '\u{1F4E7}') }));

  it('every line wrapReplyText gives (what the listeners send) is printable and fits a reply line', () => {
    fc.assert(
      fc.property(fc.option(fc.constantFrom('5.6.0', '4.3.0', '2.0.0')), anyText, (enhanced, text) => {
        const wrapped = wrapReplyText(enhanced ? `${enhanced} ${text}` : text);
        const lines = typeof wrapped === 'string' ? [wrapped] : wrapped;
        assertPrintable(lines);
        // RFC 5321 §4.5.3.1.5: 512 octets with "550-" and CRLF.
        for (const line of lines) assert.ok(line.length <= 512 - 6, `${line.length} octets`);
      }),
    );
  });

  it('an error for smtp-server carries printable text, whatever the reply lines held', () => {
    fc.assert(
      fc.property(fc.array(anyText, { minLength: 1, maxLength: 3 }), (lines) => {
        assertPrintable([toSmtpError({ code: 550, enhanced: '5.6.0', lines }).message]);
      }),
    );
  });

  it('leaves printable text as it is and escapes the rest visibly', () => {
    fc.assert(fc.property(fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)) }), (text) => printable(text) === text));
    assert.equal(printable('a\0b\r\nc\xe9\u{1F4E7}\t'), 'a\\x00b\\x0D\\x0Ac\\xE9\\u{1F4E7}\\x09');
    // The relay's own typography is spelled, not escaped.
    assert.equal(printable('RFC 7208 §4.6.4: <https://…> → x — y'), 'RFC 7208 section 4.6.4: <https://...> -> x - y');
  });
});

describe('BodyScan: NUL and over-long lines in a streamed body', () => {
  /** What a reader of the whole body finds: a NUL; a run of more than 998 octets with no CR or LF in it. */
  const reference = (body: Buffer) => ({ nul: body.includes(0), long: body.toString('latin1').split(/[\r\n]/).some((line) => line.length > 998) });

  const bodies = fc
    .array(fc.oneof(fc.constantFrom('\r\n', '\n', '\r', '\0'), fc.integer({ min: 0, max: 1100 }).map((n) => 'a'.repeat(n))), { maxLength: 12 })
    .map((parts) => Buffer.from(parts.join(''), 'latin1'));

  it('finds what a reader of the whole body finds, however the body is cut into chunks', () => {
    fc.assert(
      fc.property(bodies, fc.array(fc.nat(), { maxLength: 8 }), (body, cuts) => {
        const points = [...new Set(cuts.map((c) => c % (body.length + 1)))].sort((a, b) => a - b);
        const scan = new BodyScan();
        let from = 0;
        for (const point of [...points, body.length]) {
          scan.push(body.subarray(from, point));
          from = point;
        }
        const { nul, long } = reference(body);
        const found = scan.malformation?.problem;
        if (nul && long) assert.ok(found === 'nul' || found === 'long-line');
        else assert.equal(found, nul ? 'nul' : long ? 'long-line' : undefined, JSON.stringify({ length: body.length, points }));
      }),
      { numRuns: 500 },
    );
  });
});
