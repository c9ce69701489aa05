import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { AddressInfo, Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { SMTPServer } from 'smtp-server';
import { adoptListener, WRITTEN_FOR } from '../src/inbound/smtp-server-fixes.ts';
import { RawClient } from './harness/client.ts';

/**
 * A server that refuses `refused@…` with an enhanced code of its own, and answers DATA only
 * once the client's FIN has arrived (as the relay does when delivery takes longer than the
 * client waits).
 */
function server(): SMTPServer {
  const fins: Promise<void>[] = [];
  const smtp = new SMTPServer({
    allowHalfOpen: true,
    authOptional: true,
    disabledCommands: ['STARTTLS', 'AUTH'],
    hideENHANCEDSTATUSCODES: false,
    logger: false,
    onRcptTo: (address, _session, callback) => {
      if (address.address.startsWith('refused')) return callback(Object.assign(new Error('5.7.26 unauthenticated'), { responseCode: 550 }));
      callback();
    },
    onData: (stream, _session, callback) => {
      stream.resume();
      stream.on('end', () => void fins[fins.length - 1].then(() => callback(null, 'queued')));
    },
  });
  smtp.server.on('connection', (socket: Socket) => fins.push(new Promise((resolve) => socket.once('end', () => resolve()))));
  return smtp;
}

async function listen(smtp: SMTPServer): Promise<number> {
  await new Promise<void>((resolve) => smtp.listen(0, '127.0.0.1', resolve));
  return (smtp.server.address() as AddressInfo).port;
}

/**
 * The relay changes two behaviours of smtp-server through its connection class
 * (src/inbound/smtp-server-fixes.ts). These tests pin what that rests on: the release it was
 * written for, that smtp-server itself still behaves the way the fix works around, and that
 * servers not adopted (the simulated destinations of the tests) keep smtp-server's own ways.
 */
describe('smtp-server fixes of the relay listeners', () => {
  const adopted = server();
  const plain = server();
  /** What the adopted server said it wrote. */
  const heard: string[] = [];
  const ports: number[] = [];
  before(async () => {
    adoptListener(adopted, (_connection, reply) => heard.push(reply), { command: 60_000, session: 3_600_000, greetAtOnce: () => false });
    ports.push(await listen(adopted), await listen(plain));
  });
  after(async () => {
    await Promise.all([adopted, plain].map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  });

  it(`were written for smtp-server ${WRITTEN_FOR}, the release installed (re-check them before upgrading)`, () => {
    const manifest = createRequire(import.meta.url).resolve('smtp-server/package.json');
    assert.equal((JSON.parse(readFileSync(manifest, 'utf8')) as { version: string }).version, WRITTEN_FOR);
  });

  it("keep a reply's own enhanced code on an adopted server; a plain one prefixes its own", async () => {
    const texts: string[] = [];
    for (const port of ports) {
      const { client } = await RawClient.connect(port);
      await client.command('EHLO client.test');
      await client.command('MAIL FROM:<a@example.test>');
      const reply = await client.command('RCPT TO:<refused@example.test>');
      texts.push(`${reply.code} ${reply.text}`);
      await client.quit();
    }
    assert.deepEqual(texts, ['550 5.7.26 unauthenticated', '550 5.1.1 5.7.26 unauthenticated']);
    assert.ok(heard.includes('550 5.7.26 unauthenticated'), 'the adopted server reports the reply as written');
  });

  it('answer DATA and QUIT after a pipelined QUIT and a half-close on an adopted server; a plain one writes nothing', async () => {
    const heard: string[][] = [];
    for (const port of ports) {
      const { client } = await RawClient.connect(port);
      await client.command('EHLO client.test');
      await client.command('MAIL FROM:<a@example.test>');
      await client.command('RCPT TO:<b@example.test>');
      await client.command('DATA');
      heard.push((await client.sendAndHalfClose('Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n')).map((line) => line.slice(0, 3)));
    }
    assert.deepEqual(heard, [['250', '221'], []]);
  });
});
