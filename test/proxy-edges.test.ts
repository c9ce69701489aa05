import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { RawMx, type RawAnswer } from './harness/raw-mx.ts';
import { send } from './harness/send.ts';
import { message, World } from './harness/world.ts';

/** Behaviour at the edges of DESIGN §1's promise: never 250 for mail a recipient does not have. */
describe('proxy edge cases', () => {
  let world: World;
  let raw: RawMx;
  let script: (command: string) => RawAnswer = () => undefined;
  before(async () => {
    world = await World.start();
    world.dns.add('odd.test', { type: 'MX', data: { preference: 10, exchange: 'mx.odd.test' } });
    world.dns.add('mx.odd.test', { type: 'A', data: '127.0.0.42' });
    raw = await RawMx.start('127.0.0.42', world.mxPort, (command) => script(command));
  });
  after(async () => {
    await raw.close();
    await world.close();
  });
  beforeEach(() => {
    script = () => undefined;
    raw.log.length = 0;
    for (const destination of world.destinations.values()) {
      destination.received.length = 0;
      destination.script = {};
    }
  });

  it('delivers two recipients per destination over one connection and one transaction each', async () => {
    const recipients = ['b1@gmail.test', 'b2@gmail.test', 'c1@outlook.test', 'c2@outlook.test'];
    const before = { gmail: world.destination('gmail.test').connections, outlook: world.destination('outlook.test').connections };
    const result = await send(world.port, 'alice@example.test', recipients, message());
    assert.equal(result.data?.code, 250);
    assert.deepEqual(world.destination('gmail.test').received.map((m) => m.envelope.rcptTo), [['b1@gmail.test', 'b2@gmail.test']]);
    assert.deepEqual(world.destination('outlook.test').received.map((m) => m.envelope.rcptTo), [['c1@outlook.test', 'c2@outlook.test']]);
    assert.equal(world.destination('gmail.test').connections - before.gmail, 1);
    assert.equal(world.destination('outlook.test').connections - before.outlook, 1);
  });

  it('never counts a 3xx answer to RCPT as acceptance', async () => {
    script = (command) => (command.startsWith('RCPT') ? '354 what?' : undefined);
    const result = await send(world.port, 'alice@example.test', ['x@odd.test', 'bob@gmail.test'], message());
    assert.equal(result.rcpts[0].code, 451);
    assert.match(result.rcpts[0].text, /^4\.5\.0 mx\.odd\.test \[127\.0\.0\.42\] answered RCPT TO with "354 what\?", which is not a valid reply there/);
    assert.equal(result.data?.code, 250);
    assert.equal(world.destination('gmail.test').received.length, 1);
  });

  it('never counts a 250 answer to the DATA command as delivery', async () => {
    script = (command) => (command === 'DATA' ? '250 2.0.0 sure' : undefined);
    const result = await send(world.port, 'alice@example.test', ['x@odd.test'], message({ subject: 'data 250' }));
    assert.equal(result.data?.code, 451, JSON.stringify(result.data));
    assert.ok(!raw.log.includes('.'), 'no message was sent');
  });

  it("answers a destination's 421 at RCPT with 451 for that recipient and keeps the client's session", async () => {
    script = (command) => (command.startsWith('RCPT') ? '421 4.7.0 Try again later, closing connection' : undefined);
    const result = await send(world.port, 'alice@example.test', ['x@odd.test', 'bob@gmail.test'], message());
    assert.equal(result.rcpts[0].code, 451);
    assert.match(result.rcpts[0].text, /^4\.7\.0 mx\.odd\.test \[127\.0\.0\.42\] said: Try again later/);
    assert.equal(result.rcpts[1].code, 250);
    assert.equal(result.data?.code, 250);
  });

  it('answers 451, not 250, when a retry to a partly served destination loses the session', async () => {
    let rcptB = 0;
    script = (command) => {
      if (command !== 'RCPT TO:<b@odd.test>') return undefined;
      rcptB++;
      if (rcptB === 1) return '452 4.2.2 mailbox full';
      return rcptB === 3 ? 'drop' : undefined;
    };
    let outlookDown = true;
    world.destination('outlook.test').script = { data: () => (outlookDown ? { code: 451, message: '4.3.0 try later' } : undefined) };
    const body = message({ subject: 'partly served' });
    const recipients = ['a@odd.test', 'b@odd.test', 'c@outlook.test'];
    const deliveredToOdd = () => raw.log.filter((line) => line === '.').length;

    const first = await send(world.port, 'alice@example.test', recipients, body);
    assert.equal(first.rcpts[1].code, 452);
    assert.equal(first.data?.code, 451);
    assert.equal(deliveredToOdd(), 1, 'a@odd.test has it');

    // The retry: a is in the memo, so the session starts over for b alone, and dies at its RCPT.
    outlookDown = false;
    const second = await send(world.port, 'alice@example.test', recipients, body);
    assert.equal(second.data?.code, 451, `b@odd.test was not delivered: ${JSON.stringify(second.data)}`);
    assert.equal(deliveredToOdd(), 1);

    const third = await send(world.port, 'alice@example.test', recipients, body);
    assert.equal(third.data?.code, 250);
    assert.equal(deliveredToOdd(), 2, 'b@odd.test got it on the third attempt');
    assert.deepEqual(raw.log.filter((line) => line.startsWith('RCPT')).slice(-1), ['RCPT TO:<b@odd.test>']);
    assert.equal(world.destination('outlook.test').received.length, 1);
  });

  it('routes and forwards internationalized domains in their A-label form', async () => {
    world.dns.add('xn--mnchen-3ya.test', { type: 'MX', data: { preference: 10, exchange: 'mx.odd.test' } });
    const result = await send(world.port, 'alice@example.test', ['bob@münchen.test'], message());
    assert.equal(result.data?.code, 250, JSON.stringify(result));
    assert.ok(raw.log.includes('RCPT TO:<bob@xn--mnchen-3ya.test>'), raw.log.join('\n'));
  });

  it('sends address tricks of an allowed client only to the right-hand domain', async () => {
    const result = await send(world.port, 'alice@example.test', ['bob%evil.test@gmail.test', '@evil.test:carol@outlook.test'], message());
    assert.equal(result.data?.code, 250, JSON.stringify(result));
    assert.deepEqual(world.destination('gmail.test').received[0].envelope.rcptTo, ['bob%evil.test@gmail.test']);
    assert.deepEqual(world.destination('outlook.test').received[0].envelope.rcptTo, ['carol@outlook.test']);
    const quoted = await send(world.port, 'alice@example.test', ['"bob@evil.test"@gmail.test'], message());
    assert.ok(quoted.rcpts[0].code >= 500);
  });
});
