import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { makeKey } from './harness/dkim.ts';
import { DnsServer } from './harness/dns-server.ts';
import { RelayProcess, runCli } from './harness/process.ts';
import { RedisServer } from './harness/redis.ts';
import { send } from './harness/send.ts';
import { Internet, LogCapture, message } from './harness/world.ts';
import { resolverFor, untilWritten } from './harness/resolver.ts';


describe('fresh lookups and flushing the DNS cache', () => {
  let dns: DnsServer;
  let redis: RedisServer;
  before(async () => {
    [dns, redis] = await Promise.all([DnsServer.start(), RedisServer.start()]);
  });
  after(async () => {
    await Promise.all([dns.close(), redis.kill()]);
  });

  it('fresh asks DNS past both levels and keeps what it got for every later lookup', async () => {
    dns.set('fixed.test', [{ type: 'TXT', data: 'v=spf1 -all' }]);
    const logs = new LogCapture();
    const resolver = await resolverFor(dns, { redis: redis.url }, logs);
    const replica = await resolverFor(dns, { redis: redis.url }, logs);
    const shared = new Redis(redis.port, '127.0.0.1');
    try {
      assert.deepEqual(await resolver.resolve('fixed.test', 'TXT'), [['v=spf1 -all']]);
      await untilWritten(() => shared.exists('hygiene-relay:dns:v1:TXT:fixed.test'));
      dns.set('fixed.test', [{ type: 'TXT', data: 'v=spf1 ip4:127.0.0.2 -all' }]);
      dns.resetLog();
      assert.deepEqual(await resolver.resolve('fixed.test', 'TXT'), [['v=spf1 -all']], 'cached');
      assert.deepEqual(await replica.resolve('fixed.test', 'TXT'), [['v=spf1 -all']], 'from Redis');
      assert.equal(dns.count('fixed.test', 'TXT'), 0);
      assert.deepEqual(await resolver.fresh('fixed.test', 'TXT'), [['v=spf1 ip4:127.0.0.2 -all']]);
      assert.equal(dns.count('fixed.test', 'TXT'), 1, 'fresh asked DNS');
      assert.deepEqual(await resolver.resolve('fixed.test', 'TXT'), [['v=spf1 ip4:127.0.0.2 -all']], 'the fresh answer is now the cached one');
      const third = await resolverFor(dns, { redis: redis.url }, logs);
      try {
        assert.deepEqual(await third.resolve('fixed.test', 'TXT'), [['v=spf1 ip4:127.0.0.2 -all']], 'and Redis holds it for other replicas');
      } finally {
        third.close();
      }
      assert.equal(dns.count('fixed.test', 'TXT'), 1);
    } finally {
      resolver.close();
      replica.close();
      shared.disconnect();
    }
  });

  it('flush drops the in-process and the Redis entries under our prefix only, and logs one record', async () => {
    dns.set('one.test', [{ type: 'A', data: '127.0.0.7' }]).set('two.test', [{ type: 'MX', data: { preference: 10, exchange: 'mx.two.test' } }]);
    const logs = new LogCapture();
    const resolver = await resolverFor(dns, { redis: redis.url }, logs);
    const shared = new Redis(redis.port, '127.0.0.1');
    try {
      await shared.set('someone-else:key', 'kept');
      await resolver.resolve('one.test', 'A');
      await resolver.resolve('two.test', 'MX');
      await untilWritten(() => shared.exists('hygiene-relay:dns:v1:A:one.test', 'hygiene-relay:dns:v1:MX:two.test').then((n) => (n === 2 ? 1 : 0)));
      const dropped = await resolver.flush();
      assert.ok(dropped.memory >= 2, JSON.stringify(dropped));
      assert.ok(dropped.redis !== undefined && dropped.redis >= 2, JSON.stringify(dropped));
      assert.deepEqual(await shared.keys('hygiene-relay:dns:v1:*'), []);
      assert.equal(await shared.get('someone-else:key'), 'kept');
      assert.deepEqual(
        logs.records.filter((r) => r.msg === 'DNS cache flushed').map((r) => ({ memory: r.memory, redis: r.redis })),
        [{ memory: dropped.memory, redis: dropped.redis }],
      );
      dns.resetLog();
      await resolver.resolve('one.test', 'A');
      assert.equal(dns.count('one.test', 'A'), 1, 'asked DNS again');
    } finally {
      resolver.close();
      shared.disconnect();
    }
  });

  it('flush reaches every master of a Cluster', async () => {
    const nodes = await RedisServer.cluster();
    const logs = new LogCapture();
    const resolver = await resolverFor(dns, { redis: { cluster: nodes.map((node) => `127.0.0.1:${node.port}`) } }, logs);
    const names = Array.from({ length: 12 }, (_, i) => `n${i}.test`);
    try {
      for (const name of names) dns.set(name, [{ type: 'A', data: '127.0.0.9' }]);
      await Promise.all(names.map((name) => resolver.resolve(name, 'A')));
      const direct = nodes.map((node) => new Redis(node.port, '127.0.0.1'));
      const stored = async () => (await Promise.all(direct.map((client) => client.keys('hygiene-relay:dns:v1:*')))).flat().length;
      try {
        await untilWritten(async () => ((await stored()) === names.length ? 1 : 0));
        const perNode = await Promise.all(direct.map((client) => client.keys('hygiene-relay:dns:v1:*')));
        assert.ok(perNode.filter((keys) => keys.length > 0).length > 1, 'the entries are spread over several masters');
        const dropped = await resolver.flush();
        assert.equal(dropped.redis, names.length);
        assert.equal(await stored(), 0);
      } finally {
        for (const client of direct) client.disconnect();
      }
    } finally {
      resolver.close();
      await Promise.all(nodes.map((node) => node.kill()));
    }
  });

  it('flush with Redis down empties the in-process level and says Redis did not answer', async () => {
    const gone = await RedisServer.start();
    const logs = new LogCapture();
    const resolver = await resolverFor(dns, { redis: gone.url }, logs);
    try {
      await resolver.resolve('one.test', 'A');
      await gone.kill();
      const dropped = await resolver.flush();
      assert.ok(dropped.memory >= 1);
      assert.equal(dropped.redis, undefined);
      assert.ok(dropped.redisError);
      dns.resetLog();
      await resolver.resolve('one.test', 'A');
      assert.equal(dns.count('one.test', 'A'), 1);
    } finally {
      resolver.close();
    }
  });
});

describe('a running relay drops its cached DNS answers', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-flush-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('on `hygiene-relay dns flush` through its control socket (mode 0600), and on SIGHUP', async () => {
    const internet = await Internet.start({ verify: false });
    const key = makeKey(dir, 'example.test', 's1', 'rsa', { dns: internet.dns });
    internet.dns.add('_dmarc.example.test', { type: 'TXT', data: 'v=DMARC1; p=reject' });
    const socket = path.join(dir, 'control.sock');
    const file = path.join(dir, 'relay.yaml');
    const relay = await RelayProcess.start(file, internet.relayConfig({ control: { socket }, domains: { 'example.test': { dkim: [{ selector: 's1', key: key.file }] } } }));
    try {
      assert.equal(statSync(socket).mode & 0o777, 0o600);
      const sendOne = async (subject: string) => {
        const sent = await send(relay.port, 'alice@example.test', ['bob@gmail.test'], message({ subject }));
        assert.equal(sent.data?.code, 250, JSON.stringify(sent));
      };
      await sendOne('first');
      internet.dns.resetLog();
      await sendOne('cached');
      assert.equal(internet.dns.count('_dmarc.example.test', 'TXT'), 0, 'the second message is answered from the cache');

      const flushed = await runCli(['dns', 'flush', '--config', file]);
      assert.equal(flushed.code, 0, flushed.stderr);
      assert.match(flushed.stdout, /^DNS cache flushed: [1-9]\d* in-process answers\n$/);
      await relay.waitFor((r) => r.msg === 'DNS cache flushed');
      await sendOne('after flush');
      assert.equal(internet.dns.count('_dmarc.example.test', 'TXT'), 1, 'asked DNS again');
      assert.equal(internet.dns.count('example.test', 'TXT'), 1);

      internet.dns.resetLog();
      const seen = relay.records.length;
      relay.child.kill('SIGHUP');
      await relay.waitFor((r) => r.msg === 'DNS cache flushed', seen);
      await sendOne('after reload');
      assert.equal(internet.dns.count('_dmarc.example.test', 'TXT'), 1, 'asked DNS again after SIGHUP');
    } finally {
      await relay.stop();
      await internet.close();
    }
    const stopped = await runCli(['dns', 'flush', '--config', file]);
    assert.equal(stopped.code, 1);
    assert.match(stopped.stderr, /^hygiene-relay: cannot reach the relay at .*control\.sock: (ENOENT|ECONNREFUSED) \(is it running, with this configuration\?\)\n$/);
  });
});
