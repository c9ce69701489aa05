import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { register } from 'prom-client';
import { parseConfig } from '../src/config/index.ts';
import { hashPassword } from '../src/inbound/index.ts';
import { RawClient, type ClientReply } from './harness/client.ts';
import { RelayProcess } from './harness/process.ts';
import { RedisServer } from './harness/redis.ts';
import { Internet, message, World } from './harness/world.ts';

const plain = (user: string, password: string) => `AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`;

/** The limits of both cases: generous defaults, messages not limited, and 100 recipients an hour for the user `mailer`. */
const abuse = { limits: { perMinute: 1000, perHour: 1000, perDay: 1000, messages: { perMinute: false, perHour: false, perDay: false } }, overrides: [{ user: 'mailer', perHour: 100 }] };

/**
 * `count` messages of one recipient each as the user `mailer` on one connection, as fast as
 * the replies come: DATA after an accepted RCPT, RSET after a refused one. The RCPT replies.
 */
async function flood(port: number, count: number): Promise<ClientReply[]> {
  const { client } = await RawClient.connect(port);
  try {
    await client.command('EHLO corp-ex01.example.test');
    assert.equal((await client.command(plain('mailer', 'correct horse'))).code, 235);
    const replies: ClientReply[] = [];
    for (let i = 0; i < count; i++) {
      assert.equal((await client.command('MAIL FROM:<mailer@example.test>')).code, 250);
      const rcpt = await client.command(`RCPT TO:<victim${i}@gmail.test>`);
      replies.push(rcpt);
      if (rcpt.code === 250) assert.equal((await client.data(message({ from: 'mailer@example.test', to: `victim${i}@gmail.test` }))).final?.code, 250);
      else await client.command('RSET');
    }
    return replies;
  } finally {
    await client.quit();
  }
}

/** 500 messages over ten connections at once. */
async function fiveHundred(ports: number[]): Promise<ClientReply[]> {
  return (await Promise.all(Array.from({ length: 10 }, (_, i) => flood(ports[i % ports.length], 50)))).flat();
}

function assertLimited(replies: ClientReply[]): void {
  const accepted = replies.filter((r) => r.code === 250);
  const limited = replies.filter((r) => r.code === 451);
  assert.equal(accepted.length, 100);
  assert.equal(limited.length, 400, JSON.stringify(replies.filter((r) => r.code !== 250 && r.code !== 451).slice(0, 3)));
  for (const reply of limited) {
    assert.match(reply.text, /^4\.7\.1 user mailer is over its limit of 100 recipients per hour; try again after \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in \d+ s\)$/);
  }
}

describe('sending limits in the config', () => {
  const base = { egress: [{ ip: '203.0.113.10' }] };
  it('defaults for office mail, overrides of exactly one kind each, false for an unlimited window', () => {
    const { abuse } = parseConfig({ ...base, abuse: { overrides: [{ domain: 'Marketing.Example.COM', perDay: 10000 }, { address: '10.0.5.0/24', perMinute: false }] } });
    assert.deepEqual(abuse.limits, { perMinute: 150, perHour: 500, perDay: 2000, messages: { perMinute: 60, perHour: 300, perDay: 1000 } });
    assert.deepEqual(abuse.addressLimits, { perMinute: 1500, perHour: 5000, perDay: 20000, messages: { perMinute: 600, perHour: 3000, perDay: 10000 } });
    assert.deepEqual(abuse.overrides, [{ domain: 'marketing.example.com', perDay: 10000 }, { address: '10.0.5.0/24', perMinute: false }]);
    assert.throws(() => parseConfig({ ...base, abuse: { overrides: [{ user: 'a', address: '10.0.0.1', perHour: 5 }] } }), /abuse\.overrides\[0\]: must name exactly one of user, address/);
    assert.throws(() => parseConfig({ ...base, abuse: { overrides: [{ address: '10.0.0.0/33' }] } }), /abuse\.overrides\[0\]/);
    assert.throws(() => parseConfig({ ...base, abuse: { limits: { perHour: 0 } } }), /abuse\.limits\.perHour/);
  });
});

describe('sending limits: a user over its recipients per hour', () => {
  let password: string;
  before(async () => {
    password = await hashPassword('correct horse');
  });

  it('500 messages in a minute against 100 recipients an hour: 100 delivered, 400 answered 451 4.7.1, one abuse record, the metric', async () => {
    const world = await World.start({
      config: {
        listeners: [{ host: '127.0.0.1', port: 0, allowInsecureAuth: true }],
        clients: { networks: ['127.0.0.1/32'], users: [{ name: 'mailer', password }] },
        abuse,
      },
    });
    try {
      const replies = await fiveHundred([world.port]);
      assertLimited(replies);
      assert.equal(world.destinations.get('gmail.test')!.received.length, 100);
      const episodes = world.logs.records.filter((r) => r.msg === 'abuse');
      assert.equal(episodes.length, 1, JSON.stringify(episodes));
      assert.equal(episodes[0].user, 'mailer');
      assert.equal(episodes[0].reason, 'limit');
      assert.deepEqual((episodes[0].over as { counted: string; unit: string; limit: number; count: number }[]).map((o) => [o.counted, o.unit, o.limit, o.count]), [['user', 'recipients', 100, 101]]);
      const metric = await register.getSingleMetric('hygiene_relay_abuse_limited_total')!.get();
      assert.deepEqual(metric.values.map((v) => [v.labels, v.value]), [[{ kind: 'user', window: 'hour', unit: 'recipients' }, 400]]);
    } finally {
      await world.close();
    }
  });

  describe('across processes', () => {
    let dir: string;
    let internet: Internet;
    let redis: RedisServer;
    before(async () => {
      dir = mkdtempSync(path.join(tmpdir(), 'relay-abuse-'));
      [internet, redis] = await Promise.all([Internet.start(), RedisServer.start()]);
    });
    after(async () => {
      await Promise.all([internet.close(), redis.kill()]);
      rmSync(dir, { recursive: true, force: true });
    });

    it('two relays on one Redis share the limit: 100 recipients between them, one abuse record', async () => {
      const config = internet.relayConfig({
        listeners: [{ host: '127.0.0.1', port: 0, allowInsecureAuth: true }],
        clients: { networks: ['127.0.0.1/32'], users: [{ name: 'mailer', password }] },
        limits: { redis: redis.url },
        abuse,
      });
      const [a, b] = await Promise.all([RelayProcess.start(path.join(dir, 'a.yaml'), config), RelayProcess.start(path.join(dir, 'b.yaml'), config)]);
      try {
        assertLimited(await fiveHundred([a.port, b.port]));
        const episodes = [...a.records, ...b.records].filter((r) => r.msg === 'abuse');
        assert.equal(episodes.length, 1, JSON.stringify(episodes));
        assert.equal(internet.destinations.get('gmail.test')!.received.length, 100);
      } finally {
        await Promise.all([a.stop(), b.stop()]);
      }
    });

    it('two workers without Redis share the limit through their supervisor', async () => {
      internet.destinations.get('gmail.test')!.received.length = 0;
      const relay = await RelayProcess.start(
        path.join(dir, 'workers.yaml'),
        internet.relayConfig({
          workers: 2,
          listeners: [{ host: '127.0.0.1', port: 0, allowInsecureAuth: true }],
          clients: { networks: ['127.0.0.1/32'], users: [{ name: 'mailer', password }] },
          abuse,
        }),
      );
      try {
        assertLimited(await fiveHundred([relay.port]));
        assert.equal(relay.records.filter((r) => r.msg === 'abuse').length, 1);
        // Both workers took transactions: the limit held across them, not within each.
        assert.equal(new Set(relay.records.filter((r) => r.msg === 'transaction').map((r) => r.worker)).size, 2);
      } finally {
        await relay.stop();
      }
    });
  });
});
