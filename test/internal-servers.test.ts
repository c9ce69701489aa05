import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { RawClient } from './harness/client.ts';
import { send } from './harness/send.ts';
import { relayTlsFiles } from './harness/tls.ts';
import { message, World } from './harness/world.ts';

/**
 * What real internal servers do that a polite test client does not. Each case was seen with
 * a real MTA as the relay's client (Exim 4.96, Debian 12's default); `npm run interop` plays
 * them with the real programs.
 */
describe('internal servers as they really behave', () => {
  let world: World;
  let ca: string;
  before(async () => {
    const files = await relayTlsFiles();
    ca = files.ca;
    world = await World.start({ config: { listeners: [{ host: '127.0.0.1', port: 0, starttls: true }], tls: { cert: files.cert, key: files.key } } });
  });
  after(async () => {
    await world.close();
  });
  beforeEach(() => {
    for (const destination of world.destinations.values()) {
      destination.received.length = 0;
      destination.script = {};
    }
  });

  // RFC 2920 §3.1: QUIT may follow the end of data in one pipelined group; Exim then shuts
  // its sending side without waiting. The server still owes a reply to both.
  for (const secure of [false, true]) {
    it(`answers DATA and QUIT when the client pipelines QUIT after the final dot and half-closes${secure ? ', over STARTTLS' : ''} (Exim)`, async () => {
      const { client } = await RawClient.connect(world.port);
      assert.equal((await client.command('EHLO exim.example.test')).code, 250);
      if (secure) {
        await client.starttls(ca);
        assert.equal((await client.command('EHLO exim.example.test')).code, 250);
      }
      assert.equal((await client.command('MAIL FROM:<alice@example.test>')).code, 250);
      assert.equal((await client.command('RCPT TO:<bob@gmail.test>')).code, 250);
      assert.equal((await client.command('DATA')).code, 354);
      const before = world.destination('gmail.test').received.length;
      const lines = await client.sendAndHalfClose(`${message({ subject: 'pipelined quit' })}\r\n.\r\nQUIT\r\n`);
      assert.equal(lines.length, 2, lines.join(' | '));
      assert.match(lines[0], /^250 .*accepted by every destination/);
      assert.match(lines[1], /^221 /);
      assert.equal(world.destination('gmail.test').received.length, before + 1);
    });
  }

  it('answers every pipelined reply before closing when the client half-closes without QUIT', async () => {
    const { client } = await RawClient.connect(world.port);
    assert.equal((await client.command('EHLO exim.example.test')).code, 250);
    const lines = await client.sendAndHalfClose('MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@gmail.test>\r\nNOOP\r\n');
    assert.deepEqual(lines.map((line) => line.slice(0, 4)), ['250 ', '250 ', '250 ']);
  });

  it('delivers a retried message without Message-ID once, and adds the same Message-ID each time', async () => {
    let refuse = true;
    world.destination('outlook.test').script = { data: () => (refuse ? { code: 451, message: '4.3.0 try again later' } : undefined) };
    // Exim adds no Message-ID to mail it relays over SMTP: each retry sends these same bytes.
    const body = message({ subject: 'no message-id' }).replace(/Message-ID: .*\r\n/, '');
    const recipients = ['bob@gmail.test', 'carol@outlook.test'];
    const first = await send(world.port, 'alice@example.test', recipients, body);
    assert.equal(first.data?.code, 451);
    refuse = false;
    const retry = await send(world.port, 'alice@example.test', recipients, body);
    assert.equal(retry.data?.code, 250);
    const again = await send(world.port, 'alice@example.test', recipients, body);
    assert.equal(again.data?.code, 250);
    assert.equal(world.destination('gmail.test').received.length, 1, 'no duplicate at gmail');
    assert.equal(world.destination('outlook.test').received.length, 1, 'no duplicate at outlook');
    const [gmail] = world.destination('gmail.test').received;
    const [outlook] = world.destination('outlook.test').received;
    const messageId = (raw: string) => /^Message-ID: (.*)$/im.exec(raw)?.[1];
    assert.match(messageId(gmail.message.toString()) ?? '', /^<[0-9a-z]+@example\.test>$/);
    assert.equal(messageId(outlook.message.toString()), messageId(gmail.message.toString()), 'the retry carries the Message-ID the first attempt got');
    const records = world.logs.transactions().slice(-2);
    assert.deepEqual((records[0].recipients as { result: string }[]).map((r) => r.result), ['already-delivered', 'delivered']);
    assert.equal(records[0].messageId, messageId(gmail.message.toString()), 'the record names the Message-ID that left');
    assert.deepEqual((records[1].recipients as { result: string }[]).map((r) => r.result), ['already-delivered', 'already-delivered']);
  });
});
