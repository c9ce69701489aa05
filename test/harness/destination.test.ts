import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import dnsPacket from 'dns-packet';
import { dkimSign } from 'mailauth';
import nodemailer from 'nodemailer';
import { Destination } from './destination.ts';
import { testCertificate } from './tls.ts';

const HOST = '127.0.0.3';
const CLIENT = '127.0.0.5';

/** A bare SMTP client, to assert reply lines exactly as they appear on the wire. */
class RawClient {
  #socket: net.Socket;
  #buffer = '';
  #lines: string[] = [];
  #wake: (() => void) | undefined;
  #closed = false;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      this.#buffer += chunk;
      let end: number;
      while ((end = this.#buffer.indexOf('\r\n')) >= 0) {
        this.#lines.push(this.#buffer.slice(0, end));
        this.#buffer = this.#buffer.slice(end + 2);
      }
      this.#wake?.();
    });
    socket.on('close', () => {
      this.#closed = true;
      this.#wake?.();
    });
    socket.on('error', () => undefined);
  }

  static connect(port: number, localAddress = CLIENT): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: HOST, port, localAddress }, () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  /** The lines of one complete reply (a multi-line reply ends at `NNN `). */
  async reply(): Promise<string[]> {
    const lines: string[] = [];
    for (;;) {
      const line = this.#lines.shift();
      if (line !== undefined) {
        lines.push(line);
        if (/^\d{3}(?: |$)/.test(line)) return lines;
        continue;
      }
      if (this.#closed) throw new Error(`connection closed after ${JSON.stringify(lines)}`);
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  write(text: string): void {
    this.#socket.write(text);
  }

  async command(line: string): Promise<string[]> {
    this.write(`${line}\r\n`);
    return this.reply();
  }

  close(): void {
    this.#socket.destroy();
  }
}

function transport(destination: Destination, ca: string, options: { requireTLS?: boolean } = {}) {
  return nodemailer.createTransport({
    host: destination.host,
    port: destination.port,
    name: 'client.example.test',
    localAddress: CLIENT,
    requireTLS: options.requireTLS ?? true,
    tls: { ca },
  });
}

const MESSAGE = Buffer.from(
  [
    'From: Sender <sender@example.test>',
    'To: rcpt@dest.test',
    'Subject: harness',
    'Message-ID: <1@example.test>',
    '',
    'first line',
    '.a line that SMTP dot-stuffs',
    '..two dots',
    '',
  ].join('\r\n'),
);

describe('Destination', () => {
  let ca: string;
  before(async () => {
    ca = (await testCertificate(['mx.test', HOST])).ca;
  });

  test('records exactly what arrived over STARTTLS', async (t) => {
    const destination = await Destination.start({ host: HOST });
    t.after(() => destination.close());
    const waiting = destination.waitForMessages(1);

    const info = await transport(destination, ca).sendMail({
      envelope: { from: 'bounce@example.test', to: ['rcpt@dest.test', 'other@dest.test'] },
      raw: MESSAGE,
    });
    assert.match(info.response, /^250 2\.6\.0 /);

    const [received] = await waiting;
    assert.deepEqual(received.message, MESSAGE);
    assert.deepEqual(received.envelope, { mailFrom: 'bounce@example.test', rcptTo: ['rcpt@dest.test', 'other@dest.test'] });
    assert.equal(received.helo, 'client.example.test');
    assert.equal(received.clientAddress, CLIENT);
    assert.equal(received.secure, true);
    assert.match(received.tlsProtocol ?? '', /^TLSv1\.[23]$/);
    assert.equal(received.verdict, undefined, 'no DNS server, no mailauth verdict');
    assert.equal(destination.connections, 1);
    assert.equal(destination.received.length, 1);
  });

  test('greets at once and replies with one enhanced code', async (t) => {
    const destination = await Destination.start({
      host: HOST,
      script: {
        rcptTo: (address) =>
          address === 'gone@dest.test' ? { code: 550, message: '5.1.1 The account does not exist' } : undefined,
        mailFrom: (address) => (address === 'busy@example.test' ? { code: 450, message: 'Try again later' } : undefined),
      },
    });
    t.after(() => destination.close());
    const client = await RawClient.connect(destination.port);
    t.after(() => client.close());

    // Sent before the greeting could have been read: with smtp-server's built-in 100 ms
    // early-talker delay this would be answered "421 … You talk too soon".
    client.write('EHLO client.example.test\r\n');
    assert.deepEqual(await client.reply(), ['220 mx.test ESMTP']);
    const ehlo = await client.reply();
    assert.equal(ehlo[0], '250-mx.test Nice to meet you, [127.0.0.5]');
    assert.ok(ehlo.some((line) => /^250[- ]ENHANCEDSTATUSCODES$/.test(line)), ehlo.join('\n'));
    assert.ok(ehlo.some((line) => /^250[- ]STARTTLS$/.test(line)), ehlo.join('\n'));
    assert.ok(!ehlo.some((line) => /AUTH/.test(line)), 'a provider MX offers no AUTH');

    // Without its own enhanced code a scripted reply gets smtp-server's default for the code.
    assert.deepEqual(await client.command('MAIL FROM:<busy@example.test>'), ['450 4.2.1 Try again later']);
    assert.deepEqual(await client.command('MAIL FROM:<sender@example.test>'), ['250 2.1.0 Accepted']);
    assert.deepEqual(await client.command('RCPT TO:<gone@dest.test>'), ['550 5.1.1 The account does not exist']);
    assert.deepEqual(await client.command('RCPT TO:<here@dest.test>'), ['250 2.1.5 Accepted']);
    assert.deepEqual(await client.command('DATA'), ['354 End data with <CR><LF>.<CR><LF>']);
    assert.deepEqual(await client.command('Subject: x\r\n\r\nbody\r\n.'), ['250 2.6.0 OK: message queued']);
    assert.deepEqual(await client.command('QUIT'), ['221 2.0.0 Bye']);

    const [received] = await destination.waitForMessages(1);
    assert.deepEqual(received.envelope, { mailFrom: 'sender@example.test', rcptTo: ['here@dest.test'] });
    assert.equal(received.message.toString(), 'Subject: x\r\n\r\nbody\r\n');
    assert.equal(received.secure, false);
    assert.equal(received.tlsProtocol, undefined);
  });

  test('a scripted DATA reply refuses or words the acceptance, and only 2xx is recorded', async (t) => {
    const destination = await Destination.start({ host: HOST });
    t.after(() => destination.close());
    const client = await RawClient.connect(destination.port);
    t.after(() => client.close());
    await client.reply();
    await client.command('EHLO client.example.test');

    const send = async (): Promise<string[]> => {
      await client.command('MAIL FROM:<sender@example.test>');
      await client.command('RCPT TO:<rcpt@dest.test>');
      await client.command('DATA');
      return client.command('Subject: x\r\n\r\nbody\r\n.');
    };
    destination.script = { data: () => ({ code: 550, message: '5.7.26 Unauthenticated email is not accepted' }) };
    assert.deepEqual(await send(), ['550 5.7.26 Unauthenticated email is not accepted']);
    destination.script = { data: () => ({ code: 451, message: '4.7.500 Server busy' }) };
    assert.deepEqual(await send(), ['451 4.7.500 Server busy']);
    destination.script = { data: (_message, envelope) => ({ code: 250, message: `2.0.0 OK for ${envelope.rcptTo[0]}` }) };
    assert.deepEqual(await send(), ['250 2.0.0 OK for rcpt@dest.test']);

    assert.equal(destination.received.length, 1);
  });

  test('transactions on one connection share a connectionId, separate connections do not', async (t) => {
    const destination = await Destination.start({ host: HOST });
    t.after(() => destination.close());
    const sendOnce = async (client: RawClient, subject: string): Promise<void> => {
      await client.command('MAIL FROM:<sender@example.test>');
      await client.command('RCPT TO:<rcpt@dest.test>');
      await client.command('DATA');
      assert.match((await client.command(`Subject: ${subject}\r\n\r\nbody\r\n.`))[0], /^250 /);
    };
    const open = async (): Promise<RawClient> => {
      const client = await RawClient.connect(destination.port);
      t.after(() => client.close());
      await client.reply();
      await client.command('EHLO client.example.test');
      return client;
    };
    const first = await open();
    await sendOnce(first, 'one');
    await sendOnce(first, 'two');
    await sendOnce(await open(), 'three');

    const [one, two, three] = await destination.waitForMessages(3);
    assert.equal(one.connectionId, two.connectionId);
    assert.notEqual(one.connectionId, three.connectionId);
    assert.equal(destination.connections, 2);
  });

  test('dropMidData loses the connection mid-DATA and records nothing; the script is replaceable', async (t) => {
    const destination = await Destination.start({ host: HOST, script: { dropMidData: true } });
    t.after(() => destination.close());
    const mailer = transport(destination, ca);
    const envelope = { from: 'sender@example.test', to: ['rcpt@dest.test'] };

    await assert.rejects(mailer.sendMail({ envelope, raw: MESSAGE }), {
      code: 'ECONNECTION',
      message: 'Connection closed unexpectedly',
    });
    assert.equal(destination.received.length, 0);

    destination.script = {};
    await mailer.sendMail({ envelope, raw: MESSAGE });
    assert.equal(destination.received.length, 1);
    assert.equal(destination.connections, 2);
  });

  test('starttls: false offers no STARTTLS and records an insecure session', async (t) => {
    const destination = await Destination.start({ host: HOST, starttls: false });
    t.after(() => destination.close());
    const client = await RawClient.connect(destination.port);
    t.after(() => client.close());
    await client.reply();
    const ehlo = await client.command('EHLO client.example.test');
    assert.ok(!ehlo.some((line) => /STARTTLS/.test(line)), ehlo.join('\n'));
    assert.deepEqual(await client.command('STARTTLS'), ['500 5.5.2 Error: command not recognized']);

    await transport(destination, ca, { requireTLS: false }).sendMail({
      envelope: { from: 'sender@example.test', to: ['rcpt@dest.test'] },
      raw: MESSAGE,
    });
    const [received] = await destination.waitForMessages(1);
    assert.equal(received.secure, false);
  });

  test('size is advertised and enforced', async (t) => {
    const destination = await Destination.start({ host: HOST, size: 100 });
    t.after(() => destination.close());
    const client = await RawClient.connect(destination.port);
    t.after(() => client.close());
    await client.reply();
    const ehlo = await client.command('EHLO client.example.test');
    assert.ok(ehlo.some((line) => /^250[- ]SIZE 100$/.test(line)), ehlo.join('\n'));
    assert.match((await client.command('MAIL FROM:<sender@example.test> SIZE=1000'))[0], /^552 5\.3\.4 /);
    await client.command('MAIL FROM:<sender@example.test>');
    await client.command('RCPT TO:<rcpt@dest.test>');
    await client.command('DATA');
    assert.match((await client.command(`Subject: big\r\n\r\n${'x'.repeat(200)}\r\n.`))[0], /^552 5\.3\.4 /);
    assert.equal(destination.received.length, 0);
  });

  test('waitForMessages rejects after its timeout and when the destination closes', async () => {
    const destination = await Destination.start({ host: HOST });
    try {
      await assert.rejects(destination.waitForMessages(1, 20), /0 of 1 messages after 20 ms/);
      const pending = destination.waitForMessages(1);
      await destination.close();
      await assert.rejects(pending, /closed while waiting/);
    } finally {
      await destination.close();
    }
  });

  test('close() ends open sessions at once', async () => {
    const destination = await Destination.start({ host: HOST });
    const client = await RawClient.connect(destination.port);
    try {
      await client.reply();
      await client.command('EHLO client.example.test');
      await destination.close();
      await assert.rejects(client.reply(), /connection closed/);
    } finally {
      client.close();
    }
  });
});

describe('Destination with a DNS server', () => {
  // A minimal authoritative server for this test only; the full one lives in dns-server.ts.
  let dns: dgram.Socket;
  let dnsServer: string;
  const records = new Map<string, string[][]>();
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const publicKeyBase64 = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');

  before(async () => {
    records.set('example.test/TXT', [['v=spf1 ip4:127.0.0.5 -all']]);
    records.set('_dmarc.example.test/TXT', [['v=DMARC1; p=reject']]);
    // TXT strings are at most 255 bytes; a 2048-bit key needs several.
    const dkim = `v=DKIM1; k=rsa; p=${publicKeyBase64}`;
    records.set('sel._domainkey.example.test/TXT', [dkim.match(/.{1,255}/g) ?? []]);

    dns = dgram.createSocket('udp4');
    dns.on('message', (query, peer) => {
      const packet = dnsPacket.decode(query);
      const question = packet.questions?.[0];
      const found = question ? records.get(`${question.name.toLowerCase()}/${question.type}`) : undefined;
      const response = dnsPacket.encode({
        type: 'response',
        id: packet.id,
        // rcode 3 is NXDOMAIN, in the low bits of the flags.
        flags: dnsPacket.AUTHORITATIVE_ANSWER | (found ? 0 : 3),
        questions: packet.questions,
        answers: (found ?? []).map((data) => ({ type: 'TXT' as const, name: question?.name ?? '', ttl: 60, data })),
      });
      dns.send(response, peer.port, peer.address);
    });
    await new Promise<void>((resolve) => dns.bind(0, '127.0.0.1', resolve));
    dnsServer = `127.0.0.1:${dns.address().port}`;
  });
  after(() => new Promise<void>((resolve) => dns.close(() => resolve())));

  test('mailauth verifies what arrived against that server', async (t) => {
    const destination = await Destination.start({ host: HOST, dnsServer });
    t.after(() => destination.close());
    const key = { signingDomain: 'example.test', selector: 'sel', privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }) };
    // mailauth signs only what is in signatureData; its types also demand the top-level fields.
    const signed = await dkimSign(MESSAGE, { ...key, signatureData: [key] });
    assert.deepEqual(signed.errors, []);
    assert.match(signed.signatures, /^DKIM-Signature: /);
    const message = Buffer.concat([Buffer.from(signed.signatures), MESSAGE]);

    await transport(destination, (await testCertificate(['mx.test', HOST])).ca).sendMail({
      envelope: { from: 'bounce@example.test', to: ['rcpt@dest.test'] },
      raw: message,
    });
    const [received] = await destination.waitForMessages(1);
    assert.ok(received.verdict);
    assert.equal(received.verdict.spf, 'pass');
    assert.deepEqual(received.verdict.dkim, ['pass']);
    assert.equal(received.verdict.dmarc, 'pass');
    assert.equal(received.verdict.headerFrom, 'sender@example.test');
  });

  test('an unsigned message from an address SPF does not list fails', async (t) => {
    const destination = await Destination.start({ host: HOST, dnsServer });
    t.after(() => destination.close());
    const client = await RawClient.connect(destination.port, '127.0.0.6');
    t.after(() => client.close());
    await client.reply();
    await client.command('EHLO client.example.test');
    await client.command('MAIL FROM:<bounce@example.test>');
    await client.command('RCPT TO:<rcpt@dest.test>');
    await client.command('DATA');
    const stuffed = MESSAGE.toString('latin1').replace(/\r\n\./g, '\r\n..');
    assert.match((await client.command(`${stuffed}.`))[0], /^250 /);

    const [received] = await destination.waitForMessages(1);
    assert.deepEqual(received.message, MESSAGE);
    assert.ok(received.verdict);
    assert.equal(received.verdict.spf, 'fail');
    assert.deepEqual(received.verdict.dkim, []);
    assert.equal(received.verdict.dmarc, 'fail');
  });
});
