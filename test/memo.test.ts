import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../src/config/index.ts';
import { createLogger } from '../src/observability/index.ts';
import { createMemo } from '../src/proxy/index.ts';
import { startRelay, type Relay } from '../src/relay.ts';
import { RedisServer } from './harness/redis.ts';
import { send } from './harness/send.ts';
import { LogCapture, message, World } from './harness/world.ts';

describe('delivery memo in Redis, shared by replicas', () => {
  let redis: RedisServer;
  let world: World;
  let second: Relay;
  const secondLogs = new LogCapture();
  before(async () => {
    redis = await RedisServer.start();
    world = await World.start({ config: { memo: { redis: redis.url } } });
    second = await startRelay(parseConfig(world.relayConfig({ memo: { redis: redis.url } })), createLogger('info', secondLogs));
  });
  after(async () => {
    await second.close();
    await world.close();
    await redis.kill();
  });

  it('a retry that lands on another replica reaches only the destination still missing', async () => {
    let refuse = true;
    world.destination('outlook.test').script = { data: () => (refuse ? { code: 451, message: '4.7.650 The mail server has been temporarily rate limited' } : undefined) };
    const body = message({ subject: 'replicas' });
    const first = await send(world.port, 'alice@example.test', ['bob@gmail.test', 'carol@outlook.test'], body);
    assert.equal(first.data?.code, 451);
    refuse = false;
    const retry = await send(second.ports[0], 'alice@example.test', ['bob@gmail.test', 'carol@outlook.test'], body);
    assert.equal(retry.data?.code, 250);
    assert.equal(world.destination('gmail.test').received.length, 1, 'no duplicate at gmail');
    assert.equal(world.destination('outlook.test').received.length, 1);
    const record = await secondLogs.waitFor((r) => r.msg === 'transaction');
    assert.deepEqual((record.recipients as { result: string }[]).map((r) => r.result), ['already-delivered', 'delivered']);
  });

  it('keeps relaying on the in-process memo when Redis is gone, with one warning', async () => {
    await redis.kill();
    for (let i = 0; i < 3; i++) {
      const result = await send(world.port, 'alice@example.test', ['bob@gmail.test'], message({ subject: `no redis ${i}` }));
      assert.equal(result.data?.code, 250);
    }
    assert.equal(world.logs.records.filter((r) => r.msg === 'delivery memo: Redis unavailable, carrying on without it until it is back').length, 1);
  });
});

describe('delivery memo on a Redis Cluster', () => {
  it('one message’s keys share a slot, so what one replica records the other finds', async () => {
    const nodes = await RedisServer.cluster();
    const settings = parseConfig({ egress: [{ ip: '127.0.0.2' }], memo: { redis: { cluster: nodes.map((node) => `127.0.0.1:${node.port}`) } } }).memo;
    const logs = new LogCapture();
    const [first, second] = [createMemo(settings, createLogger('info', logs)), createMemo(settings, createLogger('info', logs))];
    try {
      await Promise.all([first.ready(), second.ready()]);
      const keys = ['bob@gmail.test', 'carol@outlook.test', 'dave@example.test'].map((recipient) => ({ message: 'a'.repeat(64), sender: 'alice@example.test', recipient }));
      await first.record([
        { key: keys[0], state: 'delivered' },
        { key: keys[1], state: 'bounced' },
      ]);
      assert.deepEqual(await second.lookup(keys), ['delivered', 'bounced', undefined]);
      assert.deepEqual(logs.records.filter((r) => r.level === 'warn'), []);
    } finally {
      await Promise.all([first.close(), second.close()]);
      await Promise.all(nodes.map((node) => node.kill()));
    }
  });
});
