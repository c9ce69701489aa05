import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { RawClient } from './harness/client.ts';
import { message, World } from './harness/world.ts';

async function send(world: World, from: string, to: string[], body: string) {
  const { client } = await RawClient.connect(world.port);
  await client.command('EHLO corp-ex01.example.test');
  const mail = await client.command(`MAIL FROM:<${from}>`);
  const rcpts = [];
  for (const r of to) rcpts.push(await client.command(`RCPT TO:<${r}>`));
  const data = rcpts.some((r) => r.code === 250) ? await client.data(body) : undefined;
  await client.quit();
  return { mail, rcpts, data };
}

describe('relay path', () => {
  let world: World;
  before(async () => {
    world = await World.start();
  });
  after(async () => world.close());

  it('delivers to the MX with the exact envelope and body, from the egress address with a HELO equal to its PTR', async () => {
    const body = message({ to: 'b@gmail.test', body: 'Line one\r\n.leading dot\r\nLine three\r\n' });
    const result = await send(world, 'alice@example.test', ['b@gmail.test'], body);
    assert.equal(result.data?.final?.code, 250, JSON.stringify(result));
    const [received] = await world.destination('gmail.test').waitForMessages(1);
    assert.deepEqual(received.envelope, { mailFrom: 'alice@example.test', rcptTo: ['b@gmail.test'] });
    assert.equal(received.clientAddress, '127.0.0.2');
    assert.equal(received.helo, 'relay-out.example.test');
    const text = received.message.toString('latin1');
    assert.match(text, /^Received: from corp-ex01\.example\.test \(\[127\.0\.0\.1\]\)\r\n\tby relay-out\.example\.test \(hygiene-relay\) with ESMTP id /);
    assert.ok(text.endsWith(body), 'the message follows the Received header byte for byte');
    assert.equal(received.verdict?.spf, 'pass');
  });
});
