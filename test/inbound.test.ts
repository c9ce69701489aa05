import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { hashPassword } from '../src/inbound/index.ts';
import { RawClient } from './harness/client.ts';
import { send } from './harness/send.ts';
import { relayTlsFiles } from './harness/tls.ts';
import { message, World } from './harness/world.ts';

const OUTSIDER = '127.0.0.50';

describe('client authorization: never an open relay', () => {
  let world: World;
  let dir: string;
  let ca: string;
  before(async () => {
    const files = await relayTlsFiles();
    ({ dir, ca } = files);
    world = await World.start({
      config: {
        listeners: [{ host: '127.0.0.1', port: 0, starttls: true }],
        tls: { cert: files.cert, key: files.key },
        clients: {
          networks: ['127.0.0.1/32'],
          users: [{ name: 'mdaemon', password: await hashPassword('correct horse'), senderDomains: ['example.test'] }],
        },
        limits: { maxRecipients: 3, maxMessageSize: '64KB' },
      },
    });
  });
  after(async () => {
    await world.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const delivered = () => [...world.destinations.values()].reduce((n, d) => n + d.received.length, 0);

  it('refuses a client outside the networks that did not authenticate', async () => {
    const before = delivered();
    const result = await send(world.port, 'alice@example.test', ['bob@gmail.test'], message(), { localAddress: OUTSIDER });
    assert.equal(result.mail.code, 530);
    assert.match(result.mail.text, /^5\.7\.0 authentication required/);
    assert.equal(delivered(), before);
  });

  for (const [trick, recipient] of [
    ['source route', '@mx.gmail.test:bob@gmail.test'],
    ['percent hack', 'bob%gmail.test@example.test'],
    ['bang path', 'gmail.test!bob@example.test'],
    ['quoted at-sign', '"bob@gmail.test"@example.test'],
    ['plain external', 'bob@gmail.test'],
  ]) {
    it(`refuses an unauthenticated outsider using a ${trick}`, async () => {
      const before = delivered();
      const { client } = await RawClient.connect(world.port, { localAddress: OUTSIDER });
      await client.command('EHLO spammer.invalid');
      const mail = await client.command('MAIL FROM:<spam@spammer.invalid>');
      const rcpt = await client.command(`RCPT TO:<${recipient}>`);
      const data = await client.command('DATA');
      await client.quit();
      assert.ok(mail.code >= 500 || rcpt.code >= 500, `${mail.code} / ${rcpt.code}`);
      assert.ok(data.code >= 500, `DATA answered ${data.code}`);
      assert.equal(delivered(), before);
    });
  }

  it('refuses AUTH before STARTTLS', async () => {
    const { client } = await RawClient.connect(world.port, { localAddress: OUTSIDER });
    await client.command('EHLO corp-mdaemon.example.test');
    const auth = await client.command(`AUTH PLAIN ${Buffer.from('\0mdaemon\0correct horse').toString('base64')}`);
    await client.quit();
    assert.equal(auth.code, 538);
  });

  it('refuses a wrong password, and relays for the right one over STARTTLS', async () => {
    const before = delivered();
    const transport = (pass: string) =>
      nodemailer.createTransport({ host: '127.0.0.1', port: world.port, localAddress: OUTSIDER, requireTLS: true, tls: { ca, servername: 'relay.test' }, auth: { user: 'mdaemon', pass } });
    await assert.rejects(transport('wrong').sendMail({ envelope: { from: 'alice@example.test', to: ['bob@gmail.test'] }, raw: message() }), /535/);
    assert.equal(delivered(), before);
    const info = await transport('correct horse').sendMail({ envelope: { from: 'alice@example.test', to: ['bob@gmail.test'] }, raw: message() });
    assert.match(info.response, /^250 /);
    const [received] = await world.destination('gmail.test').waitForMessages(1);
    assert.match(received.message.toString(), /with ESMTPSA id /);
  });

  it('relays for a client from a trusted network that used STARTTLS without AUTH', async () => {
    const before = delivered();
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: world.port, requireTLS: true, tls: { ca, servername: 'relay.test' } });
    const info = await transport.sendMail({ envelope: { from: 'alice@example.test', to: ['bob@gmail.test'] }, raw: message() });
    assert.match(info.response, /^250 /);
    assert.equal(delivered(), before + 1);
  });

  it('closes the connection after three failed AUTH attempts', async () => {
    const { client } = await RawClient.connect(world.port, { localAddress: OUTSIDER });
    await client.command('EHLO guesser.invalid');
    await client.starttls(ca);
    await client.command('EHLO guesser.invalid');
    const attempt = (password: string) => client.command(`AUTH PLAIN ${Buffer.from(`\0mdaemon\0${password}`).toString('base64')}`);
    assert.equal((await attempt('one')).code, 535);
    assert.equal((await attempt('two')).code, 535);
    const third = await attempt('three');
    assert.equal(third.code, 421);
    assert.match(third.text, /^4\.7\.0 Too many authentication failures/);
    await client.closed;
  });

  it('refuses a sender domain the user is not allowed to send as', async () => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: world.port, localAddress: OUTSIDER, requireTLS: true, tls: { ca, servername: 'relay.test' }, auth: { user: 'mdaemon', pass: 'correct horse' } });
    await assert.rejects(transport.sendMail({ envelope: { from: 'ceo@other.test', to: ['bob@gmail.test'] }, raw: message({ from: 'ceo@other.test' }) }), /550 5\.7\.1 user mdaemon may not send as <ceo@other\.test>/);
  });

  it('answers 452 4.5.3 past the recipient limit', async () => {
    const result = await send(world.port, 'alice@example.test', ['a@gmail.test', 'b@gmail.test', 'c@gmail.test', 'd@gmail.test'], message());
    assert.deepEqual(result.rcpts.map((r) => r.code), [250, 250, 250, 452]);
    assert.match(result.rcpts[3].text, /^4\.5\.3 too many recipients/);
    assert.equal(result.data?.code, 250);
  });

  it('refuses a message over the size limit with 552 5.3.4 and delivers nothing', async () => {
    const before = delivered();
    const result = await send(world.port, 'alice@example.test', ['bob@gmail.test'], message({ body: 'x'.repeat(100 * 1024) + '\r\n' }));
    assert.equal(result.data?.code, 552);
    assert.equal(delivered(), before);
  });
});

describe('listeners: PROXY protocol and implicit TLS', () => {
  let world: World;
  let dir: string;
  let ca: string;
  before(async () => {
    const files = await relayTlsFiles();
    ({ dir, ca } = files);
    world = await World.start({
      config: {
        listeners: [
          { host: '127.0.0.1', port: 0, proxyProtocol: [OUTSIDER] },
          { host: '127.0.0.1', port: 0, implicitTls: true },
        ],
        tls: { cert: files.cert, key: files.key },
        clients: { networks: ['127.0.0.1/32', '10.1.2.0/24'] },
      },
    });
  });
  after(async () => {
    await world.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function viaProxy(clientIp: string, balancer = OUTSIDER) {
    const { client } = await RawClient.connect(world.relay.ports[0], { localAddress: balancer, proxyHeader: `PROXY TCP4 ${clientIp} 127.0.0.1 40000 25\r\n` });
    await client.command('EHLO corp-ex01.example.test');
    const mail = await client.command('MAIL FROM:<alice@example.test>');
    await client.quit();
    return mail;
  }

  it('judges the client by the address in the PROXY header, not the load balancer', async () => {
    assert.equal((await viaProxy('10.1.2.3')).code, 250);
    const refused = await viaProxy('198.51.100.7');
    assert.equal(refused.code, 550);
    assert.match(refused.text, /198\.51\.100\.7 is not in a trusted network/);
  });

  it('refuses a PROXY header from a peer that is not a listed load balancer', async () => {
    // To anyone else the header is just a client talking before the greeting.
    const { client, greeting } = await RawClient.connect(world.relay.ports[0], { localAddress: '127.0.0.51', proxyHeader: 'PROXY TCP4 10.1.2.3 127.0.0.1 40000 25\r\n' });
    assert.equal(greeting.code, 421);
    await client.closed;
  });

  it('relays over an implicit-TLS listener', async () => {
    const { client, greeting } = await RawClient.connect(world.relay.ports[1], { tls: { ca } });
    assert.equal(greeting.code, 220);
    await client.command('EHLO corp-ex01.example.test');
    await client.command('MAIL FROM:<alice@example.test>');
    assert.equal((await client.command('RCPT TO:<bob@gmail.test>')).code, 250);
    const { final } = await client.data(message({ subject: 'implicit tls' }));
    await client.quit();
    assert.equal(final?.code, 250);
    const [received] = await world.destination('gmail.test').waitForMessages(1);
    assert.match(received.message.toString(), /with ESMTPS id /);
  });
});

describe('connection limit', () => {
  let world: World;
  before(async () => {
    world = await World.start({ config: { limits: { maxClients: 1 } } });
  });
  after(async () => world.close());

  it('answers 421 to a client past limits.maxClients', async () => {
    const first = await RawClient.connect(world.port);
    assert.equal(first.greeting.code, 220);
    const second = await RawClient.connect(world.port);
    assert.equal(second.greeting.code, 421);
    await second.client.closed;
    assert.match(second.greeting.text, /^4\.7\.0 too many connected clients \(1\)/);
    await first.client.quit();
  });
});
