import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { hashPassword } from '../src/inbound/index.ts';
import { RawClient, type ClientReply } from './harness/client.ts';
import { message, World } from './harness/world.ts';

interface RecipientRecord {
  address: string;
  client?: string;
  destination?: { rcpt?: string; data?: string };
  result: string;
}

/** A reply as the client read it off the socket, lines joined as the record keeps them. */
const wire = (reply: ClientReply) => reply.lines.join('\r\n');

/** One scripted session from a raw client: every reply it read, and the transaction record. */
async function session(world: World, from: string, to: string[], body: string | undefined, end: 'quit' | 'drop-mid-data' = 'quit') {
  const { client } = await RawClient.connect(world.port);
  await client.command('EHLO corp-ex01.example.test');
  const mail = await client.command(`MAIL FROM:<${from}>`);
  const rcpts: ClientReply[] = [];
  for (const address of to) rcpts.push(await client.command(`RCPT TO:<${address}>`));
  let final: ClientReply | undefined;
  const mark = world.logs.records.length;
  if (end === 'drop-mid-data') {
    await client.command('DATA');
    client.write('Subject: half a message\r\n\r\nthe first line and no more');
    client.destroy();
  } else {
    if (body !== undefined) final = (await client.data(body)).final;
    await client.quit();
  }
  const record = await world.logs.waitFor((r) => r.msg === 'transaction' && world.logs.records.indexOf(r) >= mark && (r.envelope as { mailFrom: string }).mailFrom === from);
  return { mail, rcpts, final, record, recipients: record.recipients as RecipientRecord[] };
}

describe('the transaction record is the wire', () => {
  let world: World;
  before(async () => {
    world = await World.start();
  });
  after(async () => {
    await world.close();
  });
  beforeEach(() => {
    for (const destination of world.destinations.values()) destination.script = {};
  });

  it('all delivered: every RCPT reply and the final reply, byte for byte', async () => {
    const s = await session(world, 'alice@example.test', ['bob@gmail.test', 'carol@outlook.test'], message({ subject: 'all delivered' }));
    assert.equal(s.final?.code, 250);
    assert.deepEqual(s.recipients.map((r) => r.client), s.rcpts.map(wire));
    assert.equal(s.record.reply, wire(s.final!));
    assert.deepEqual(s.recipients.map((r) => r.result), ['delivered', 'delivered']);
    // What the destinations said, in their own words, kept apart from what the client was told.
    assert.match(s.recipients[0].destination!.rcpt!, /^250 /);
    assert.match(s.recipients[0].destination!.data!, /^250 /);
    assert.doesNotMatch(s.recipients[0].destination!.rcpt!, /relay id/);
  });

  it('one RCPT refused: the client heard the relayed refusal, the record has it and the destination’s own words', async () => {
    world.destination('gmail.test').script = { rcptTo: (address) => (address.startsWith('nobody') ? { code: 550, message: '5.1.1 The email account that you tried to reach does not exist' } : undefined) };
    const s = await session(world, 'alice@example.test', ['nobody@gmail.test', 'bob@gmail.test'], message({ subject: 'one refused' }));
    assert.equal(s.rcpts[0].code, 550);
    assert.deepEqual(s.recipients.map((r) => r.client), s.rcpts.map(wire));
    assert.equal(s.recipients[0].destination?.rcpt, '550 5.1.1 The email account that you tried to reach does not exist');
    assert.equal(s.record.reply, wire(s.final!));
    assert.deepEqual(s.recipients.map((r) => r.result), ['refused', 'delivered']);
  });

  it('DATA refused by the relay’s policy: the record has the refusal as sent, and its recipients are refused', async () => {
    const s = await session(world, 'nobody@unauthenticated.test', ['bob@gmail.test'], message({ from: 'nobody@unauthenticated.test', subject: 'refused at DATA' }));
    assert.equal(s.final?.code, 550);
    assert.equal(s.record.reply, wire(s.final!));
    assert.deepEqual(s.recipients.map((r) => [r.client, r.result]), [[wire(s.rcpts[0]), 'refused']]);
  });

  it('destinations disagreeing: the 451 as sent, one delivered and one deferred', async () => {
    world.destination('outlook.test').script = { data: () => ({ code: 451, message: '4.7.650 The mail server has been temporarily rate limited' }) };
    const s = await session(world, 'alice@example.test', ['bob@gmail.test', 'carol@outlook.test'], message({ subject: 'disagreeing' }));
    assert.equal(s.final?.code, 451);
    assert.equal(s.record.reply, wire(s.final!));
    assert.deepEqual(s.recipients.map((r) => r.result), ['delivered', 'deferred']);
    assert.equal(s.recipients[1].destination?.data, '451 4.7.650 The mail server has been temporarily rate limited');
  });

  it('QUIT after RCPT: abandoned after RCPT TO, and no reply the client never got', async () => {
    const s = await session(world, 'alice@example.test', ['bob@gmail.test'], undefined);
    assert.equal(s.record.outcome, 'abandoned');
    assert.deepEqual(s.record.abandoned, { stage: 'after RCPT TO', reason: 'the client closed the connection' });
    assert.equal(s.record.reply, undefined);
    assert.deepEqual(s.recipients.map((r) => [r.client, r.result]), [[wire(s.rcpts[0]), 'abandoned']]);
  });

  it('the client dropping the connection in the middle of DATA: abandoned during DATA, nothing delivered, no reply', async () => {
    const before = world.destination('gmail.test').received.length;
    const s = await session(world, 'alice@example.test', ['bob@gmail.test'], undefined, 'drop-mid-data');
    assert.equal(s.record.outcome, 'abandoned');
    assert.equal((s.record.abandoned as { stage: string }).stage, 'during DATA');
    assert.equal(s.record.reply, undefined);
    assert.equal(world.destination('gmail.test').received.length, before);
    assert.ok(!world.logs.records.some((r) => r.level === 50 && r.msg === 'transaction failed while spooling'), 'a client leaving is no error of the relay');
  });
});

describe('every refusal is a record', () => {
  let world: World;
  let closed = false;
  before(async () => {
    world = await World.start({
      config: {
        listeners: [{ host: '127.0.0.1', port: 0, allowInsecureAuth: true }],
        clients: { networks: ['127.0.0.1/32'], users: [{ name: 'mdaemon', password: await hashPassword('correct horse') }] },
      },
    });
  });
  after(async () => {
    if (!closed) await world.close();
  });
  const refusals = (ip: string) => world.logs.records.filter((r) => (r.msg === 'refused' && r.client === ip) || (r.msg === 'refused repeatedly' && r.client === ip));

  it('a stranger refused at MAIL FROM leaves one record with its address and the reason', async () => {
    const { client } = await RawClient.connect(world.port, { localAddress: '127.0.0.97' });
    await client.command('EHLO stranger.example');
    const reply = await client.command('MAIL FROM:<spam@stranger.example>');
    await client.quit();
    assert.equal(reply.code, 530);
    const [record] = await Promise.all([world.logs.waitFor((r) => r.msg === 'refused' && r.client === '127.0.0.97')]);
    assert.deepEqual([record.stage, record.sender, record.reply], ['MAIL FROM', 'spam@stranger.example', wire(reply)]);
    assert.match(String(record.reason), /127\.0\.0\.97 is not in a trusted network/);
    assert.equal(refusals('127.0.0.97').length, 1);
  });

  it('a wrong AUTH password leaves one record naming the user, never the password', async () => {
    const { client } = await RawClient.connect(world.port, { localAddress: '127.0.0.98' });
    await client.command('EHLO guesser.example');
    const reply = await client.command(`AUTH PLAIN ${Buffer.from('\0mdaemon\0battery staple').toString('base64')}`);
    await client.quit();
    assert.equal(reply.code, 535);
    const record = await world.logs.waitFor((r) => r.msg === 'refused' && r.client === '127.0.0.98');
    assert.deepEqual([record.stage, record.user, record.reply], ['AUTH', 'mdaemon', wire(reply)]);
    assert.ok(!JSON.stringify(world.logs.records).includes('battery staple'), 'the password is in no record');
  });

  it('a relaying-denied RCPT (no transaction to take it) leaves one record', async () => {
    const { client } = await RawClient.connect(world.port, { localAddress: '127.0.0.96' });
    await client.command('EHLO stranger.example');
    const reply = await client.command('RCPT TO:<victim@gmail.test>');
    await client.quit();
    assert.ok(reply.code >= 500, wire(reply));
    const record = await world.logs.waitFor((r) => r.msg === 'refused' && r.client === '127.0.0.96');
    assert.equal(record.reply, wire(reply));
    assert.equal(refusals('127.0.0.96').length, 1);
  });

  it('1,000 refusals from one address leave at most a few records', async () => {
    const { client } = await RawClient.connect(world.port, { localAddress: '127.0.0.95' });
    await client.command('EHLO flood.example');
    for (let i = 0; i < 1000; i++) assert.equal((await client.command(`MAIL FROM:<spam${i}@flood.example>`)).code, 530);
    await client.quit();
    // Stopping summarises what is still being counted.
    await world.close();
    closed = true;
    const records = refusals('127.0.0.95');
    assert.ok(records.length <= 3, `${records.length} records`);
    const summary = records.find((r) => r.msg === 'refused repeatedly');
    assert.ok(summary, 'the flood is summarised');
    assert.equal(Number(summary.count) + records.filter((r) => r.msg === 'refused').length, 1000, 'every refusal is counted, none lost');
  });
});
