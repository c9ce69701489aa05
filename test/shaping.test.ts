import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { parseConfig } from '../src/config/index.ts';
import { createLogger } from '../src/observability/index.ts';
import { startRelay } from '../src/relay.ts';
import { RawClient } from './harness/client.ts';
import { RawMx } from './harness/raw-mx.ts';
import { RedisServer } from './harness/redis.ts';
import { send } from './harness/send.ts';
import { LogCapture, message, World } from './harness/world.ts';

/** The Gmail-like destination as a provider of its own, with these limits. */
function gmailProvider(limits: Record<string, unknown>) {
  return { gmail: { mx: ['gmail.test'], ...limits } };
}

/** `count` transactions over one client connection, one recipient each; the final replies. */
async function sendOnOneConnection(port: number, subjects: string[]): Promise<number[]> {
  const { client } = await RawClient.connect(port);
  const codes: number[] = [];
  try {
    await client.command('EHLO corp-ex01.example.test');
    for (const subject of subjects) {
      await client.command('MAIL FROM:<alice@example.test>');
      const rcpt = await client.command(`RCPT TO:<${subject}@gmail.test>`);
      if (rcpt.code !== 250) {
        codes.push(rcpt.code);
        await client.command('RSET');
        continue;
      }
      const { final } = await client.data(message({ subject, to: `${subject}@gmail.test`, messageId: `${subject}@example.test` }));
      codes.push(final?.code ?? 0);
    }
  } finally {
    await client.quit();
  }
  return codes;
}

describe('connection reuse', () => {
  it('100 messages over 5 client connections use at most maxSessions upstream sessions, and reused ones deliver exactly what fresh ones do', async () => {
    const world = await World.start({
      verify: false,
      config: (internet) => ({
        delivery: internet.deliverySettings({ pool: { maxIdle: 3 }, providers: gmailProvider({ maxSessions: 3, messagesPerMinute: 1000 }) }),
        // 100 messages a minute from one sender: over the abuse guard's 60 (its own tests show that).
        abuse: { overrides: [{ domain: 'example.test', messages: { perMinute: false } }] },
      }),
    });
    try {
      const gmail = world.destination('gmail.test');
      const batches = Array.from({ length: 5 }, (_, c) => Array.from({ length: 20 }, (_, i) => `m${c}-${i}`));
      const codes = await Promise.all(batches.map((subjects) => sendOnOneConnection(world.port, subjects)));
      assert.deepEqual(codes.flat(), Array(100).fill(250));
      const received = await gmail.waitForMessages(100);
      assert.ok(gmail.connections <= 3, `${gmail.connections} upstream sessions for 100 messages`);
      assert.equal(new Set(received.map((r) => r.connectionId)).size, gmail.connections);
      // Each message arrived alone, with its own envelope: nothing left over from the session's last transaction.
      for (const r of received) {
        const subject = /^Subject: (.*)$/m.exec(r.message.toString())![1];
        assert.deepEqual(r.envelope, { mailFrom: 'alice@example.test', rcptTo: [`${subject}@gmail.test`] });
        assert.match(r.message.toString(), new RegExp(`^Message-ID: <${subject}@example\\.test>`, 'm'));
      }
      assert.deepEqual(received.map((r) => /^Subject: (.*)$/m.exec(r.message.toString())![1]).sort(), batches.flat().sort());
      const upstream = world.logs.transactions().map((t) => (t.upstream as { reused?: boolean }[])[0]);
      assert.equal(upstream.filter((u) => u.reused === false).length, gmail.connections);
      assert.equal(upstream.filter((u) => u.reused === true).length, 100 - gmail.connections);
    } finally {
      await world.close();
    }
  });

  it('an idle session the destination closed is not used: the next message opens a fresh one', async () => {
    const world = await World.start({ verify: false, config: (internet) => ({ delivery: internet.deliverySettings({ pool: { maxIdle: 1 } }) }) });
    try {
      const gmail = world.destination('gmail.test');
      assert.equal((await send(world.port, 'alice@example.test', ['bob@gmail.test'], message({ subject: 'one' }))).data?.code, 250);
      gmail.dropConnections();
      assert.equal((await send(world.port, 'alice@example.test', ['bob@gmail.test'], message({ subject: 'two' }))).data?.code, 250);
      const received = await gmail.waitForMessages(2);
      assert.notEqual(received[0].connectionId, received[1].connectionId);
    } finally {
      await world.close();
    }
  });
});

describe('shaping per provider', () => {
  it('30 messages a minute across two relays sharing Redis: of 60 sent at once, 30 are delivered and 30 answered 451', async () => {
    const redis = await RedisServer.start();
    const shaping = { redis: redis.url, providers: gmailProvider({ maxSessions: 60, messagesPerMinute: 30 }) };
    const world = await World.start({ verify: false, config: (internet) => ({ delivery: internet.deliverySettings(shaping) }) });
    const second = await startRelay(parseConfig(world.relayConfig({ delivery: world.deliverySettings(shaping) })), createLogger('info', new LogCapture()));
    try {
      const results = await Promise.all(
        Array.from({ length: 60 }, (_, i) => send(i % 2 ? second.ports[0] : world.port, 'alice@example.test', [`u${i}@gmail.test`], message({ subject: `burst ${i}` }))),
      );
      const delivered = results.filter((r) => r.data?.code === 250);
      const refused = results.filter((r) => r.rcpts[0].code === 451);
      assert.equal(delivered.length, 30);
      assert.equal(refused.length, 30);
      for (const r of refused) assert.match(r.rcpts[0].text, /^4\.7\.0 gmail takes at most 30 messages a minute from 127\.0\.0\.2/);
      assert.equal((await world.destination('gmail.test').waitForMessages(30)).length, 30);
      assert.equal(world.destination('gmail.test').received.length, 30);
    } finally {
      await second.close();
      await world.close();
      await redis.kill();
    }
  });

  it('a pause is shared: after Gmail throttles one relay, the other answers 451 without connecting; Yahoo [TSS04] at the greeting pauses Yahoo', async () => {
    const redis = await RedisServer.start();
    const shaping = { redis: redis.url, providers: { ...gmailProvider({ backoff: '1m' }), yahoo: { mx: ['yahoo.test'], backoff: '1m' } } };
    const world = await World.start({ verify: false, config: (internet) => ({ delivery: internet.deliverySettings(shaping) }) });
    world.dns.add('yahoo.test', { type: 'MX', data: { preference: 1, exchange: 'mx.yahoo.test' } }).add('mx.yahoo.test', { type: 'A', data: '127.0.0.44' });
    const tss04 = '421 4.7.0 [TSS04] Messages from 127.0.0.2 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes';
    const yahoo = await RawMx.start('127.0.0.44', world.mxPort, () => undefined, { greeting: () => tss04 });
    const logs = new LogCapture();
    const second = await startRelay(parseConfig(world.relayConfig({ delivery: world.deliverySettings(shaping) })), createLogger('info', logs));
    try {
      const gmail = world.destination('gmail.test');
      gmail.script = { rcptTo: () => ({ code: 421, message: '4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address.' }) };
      assert.equal((await send(world.port, 'alice@example.test', ['bob@gmail.test'], message())).rcpts[0].code, 451);
      const connections = gmail.connections;
      const paused = await send(second.ports[0], 'alice@example.test', ['bob@gmail.test'], message());
      assert.match(paused.rcpts[0].text, /^4\.7\.0 delivery to gmail from 127\.0\.0\.2 is paused until /);
      assert.equal(gmail.connections, connections, 'the second relay did not connect');

      const refused = await send(world.port, 'alice@example.test', ['carol@yahoo.test'], message());
      assert.equal(refused.rcpts[0].code, 451);
      const later = await send(second.ports[0], 'alice@example.test', ['carol@yahoo.test'], message());
      assert.match(later.rcpts[0].text, /^4\.7\.0 delivery to yahoo from 127\.0\.0\.2 is paused until /);
    } finally {
      await second.close();
      await yahoo.close();
      await world.close();
      await redis.kill();
    }
  });

  it('ramps back through Redis: every delivery after the pause counts towards the next session', async () => {
    const redis = await RedisServer.start();
    const world = await World.start({
      verify: false,
      config: (internet) => ({ delivery: internet.deliverySettings({ redis: redis.url, pool: { maxIdle: 0 }, providers: gmailProvider({ maxSessions: 3, backoff: '1s' }) }) }),
    });
    const shared = new Redis(redis.port, '127.0.0.1');
    try {
      const gmail = world.destination('gmail.test');
      let throttle = true;
      gmail.script = { rcptTo: () => (throttle ? { code: 421, message: '4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address.' } : undefined) };
      assert.equal((await send(world.port, 'alice@example.test', ['bob@gmail.test'], message())).rcpts[0].code, 451);
      throttle = false;
      // The back-off period passing is what is under test here.
      await delay(1100);
      for (let i = 0; i < 10; i++) assert.equal((await send(world.port, 'alice@example.test', [`r${i}@gmail.test`], message({ subject: `ramp ${i}` }))).data?.code, 250);
      assert.equal(await shared.get('hygiene-relay:shaping:v1:ramp:gmail:127.0.0.2'), '10', 'ten deliveries after the pause: a second session is allowed');
    } finally {
      shared.disconnect();
      await world.close();
      await redis.kill();
    }
  });

  it('after 421-4.7.28 the relay pauses Gmail for the back-off period, answering 451 without connecting, then resumes on one session', async () => {
    const world = await World.start({
      verify: false,
      config: (internet) => ({ delivery: internet.deliverySettings({ providers: gmailProvider({ maxSessions: 5, backoff: '1s' }) }) }),
    });
    try {
      const gmail = world.destination('gmail.test');
      let throttle = true;
      gmail.script = {
        rcptTo: () =>
          throttle
            ? { code: 421, message: '4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.' }
            : undefined,
      };
      const throttled = await send(world.port, 'alice@example.test', ['bob@gmail.test'], message({ subject: 'throttled' }));
      assert.equal(throttled.rcpts[0].code, 451);
      assert.match(throttled.rcpts[0].text, /^4\.7\.28 mx\.gmail\.test \[127\.0\.0\.10\] said: .*unusual rate/);
      throttle = false;
      const connections = gmail.connections;
      const paused = await send(world.port, 'alice@example.test', ['bob@gmail.test'], message({ subject: 'paused' }));
      assert.equal(paused.rcpts[0].code, 451);
      assert.match(paused.rcpts[0].text, /^4\.7\.0 delivery to gmail from 127\.0\.0\.2 is paused until .* because gmail asked the relay to slow down/);
      assert.equal(gmail.connections, connections, 'no session was opened while paused');
      assert.ok(world.logs.records.some((r) => r.msg === 'provider asked to slow down: pausing deliveries to it from this egress' && r.provider === 'gmail'));

      // The back-off period passing is what is under test here.
      await delay(1100);
      const resumed = await Promise.all([1, 2, 3].map((i) => send(world.port, 'alice@example.test', [`r${i}@gmail.test`], message({ subject: `resumed ${i}` }))));
      assert.deepEqual(resumed.map((r) => r.data?.code), [250, 250, 250]);
      const received = await gmail.waitForMessages(3);
      assert.equal(new Set(received.map((r) => r.connectionId)).size, 1, 'resumed on a single session');
    } finally {
      await world.close();
    }
  });
});
