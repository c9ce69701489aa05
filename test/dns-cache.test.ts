import assert from 'node:assert/strict';
import { promises as nodeDns } from 'node:dns';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { makeKey } from './harness/dkim.ts';
import { DnsServer } from './harness/dns-server.ts';
import { RelayProcess } from './harness/process.ts';
import { RedisServer } from './harness/redis.ts';
import { send } from './harness/send.ts';
import { Internet, LogCapture, message, World } from './harness/world.ts';
import { resolverFor, untilWritten } from './harness/resolver.ts';

const OUTAGE = 'DNS cache: Redis unavailable, carrying on without it until it is back';


async function outcome(promise: Promise<unknown>): Promise<unknown> {
  try {
    return { value: await promise };
  } catch (err) {
    const { code, syscall, hostname } = err as NodeJS.ErrnoException & { hostname?: string };
    return { error: { code, syscall, hostname } };
  }
}

describe('DNS answers, cached or not, are what node gives', () => {
  let dns: DnsServer;
  let redis: RedisServer;
  before(async () => {
    [dns, redis] = await Promise.all([DnsServer.start(), RedisServer.start()]);
    dns.add('all.test', { type: 'A', data: '127.0.0.7' })
      .add('all.test', { type: 'A', data: '127.0.0.8' })
      .add('all.test', { type: 'AAAA', data: '2001:db8::1' })
      .add('v6.test', { type: 'AAAA', data: '::ffff:1.2.3.4' })
      .add('v6.test', { type: 'AAAA', data: '2001:0:0:1::1' })
      .add('all.test', { type: 'MX', data: { preference: 20, exchange: 'mx2.all.test' } })
      .add('all.test', { type: 'MX', data: { preference: 10, exchange: 'mx1.all.test' } })
      .add('all.test', { type: 'NS', data: 'ns1.all.test' })
      .add('all.test', { type: 'TXT', data: 'v=spf1 ip4:127.0.0.2 -all' })
      .add('all.test', { type: 'TXT', data: ['two', 'strings'] })
      .add('all.test', { type: 'TXT', data: `v=DKIM1; k=rsa; p=${'A'.repeat(600)}` })
      .add('alias.all.test', { type: 'CNAME', data: 'all.test' })
      .add('dot.test', { type: 'A', data: '127.0.0.9' })
      .add('nomail.test', { type: 'MX', data: { preference: 0, exchange: '.' } })
      .addPtr('127.0.0.7', 'host.all.test')
      .fault('broken.test', '*', 'servfail')
      .fault('silent.test', '*', 'timeout');
  });
  after(async () => {
    await Promise.all([dns.close(), redis.kill()]);
  });

  it('deep-equal for every record type the relay uses, and errors keep their codes', async () => {
    const node = new nodeDns.Resolver({ timeout: 300, tries: 1 });
    node.setServers([dns.address]);
    const relay = await resolverFor(dns, { redis: redis.url });
    // Empty in-process level, same Redis: what another replica gets.
    const replica = await resolverFor(dns, { redis: redis.url });
    const shared = new Redis(redis.port, '127.0.0.1');
    const questions: [string, string][] = [
      ['all.test', 'A'],
      ['all.test', 'AAAA'],
      ['all.test', 'MX'],
      ['all.test', 'NS'],
      ['all.test', 'TXT'],
      ['alias.all.test', 'A'],
      ['alias.all.test', 'CNAME'],
      ['Dot.Test.', 'A'],
      ['v6.test', 'AAAA'],
      ['7.0.0.127.in-addr.arpa', 'PTR'],
      ['nomail.test', 'MX'],
      ['missing.test', 'A'],
      ['all.test', 'PTR'],
      ['a..test', 'A'],
      [`${'x'.repeat(64)}.test`, 'TXT'],
      ['broken.test', 'TXT'],
      ['silent.test', 'A'],
    ];
    try {
      for (const [name, type] of questions) {
        const expected = await outcome(node.resolve(name, type));
        assert.deepEqual(await outcome(relay.resolve(name, type)), expected, `${type} ${name} uncached`);
        const key = `hygiene-relay:dns:v1:${type}:${name.toLowerCase().replace(/\.$/, '')}`;
        if (!('error' in (expected as object)) || /ENOTFOUND|ENODATA/.test(JSON.stringify(expected))) await untilWritten(() => shared.exists(key));
        assert.deepEqual(await outcome(relay.resolve(name, type)), expected, `${type} ${name} from the in-process cache`);
        assert.deepEqual(await outcome(replica.resolve(name, type)), expected, `${type} ${name} from Redis`);
      }
      const codes = await Promise.all(questions.slice(-6).map(async ([name, type]) => ((await outcome(relay.resolve(name, type))) as { error: { code: string } }).error.code));
      assert.deepEqual(codes, ['ENOTFOUND', 'ENODATA', 'EBADNAME', 'EBADNAME', 'ESERVFAIL', 'ETIMEOUT']);
      // Only the answers were shared: the replica asked DNS again for the errors alone.
      assert.equal(dns.count('all.test', 'MX'), 2, 'node once, the relay once, the replica from Redis');
      assert.equal(dns.count('dot.test', 'A'), 2, 'Dot.Test. is dot.test: node once, the relay once');
      assert.equal(dns.count('broken.test', 'TXT'), 5, 'node once, the relay three times, the replica once');
    } finally {
      relay.close();
      replica.close();
      shared.disconnect();
    }
  });

  it('gives every caller its own copy: sorting one answer does not change the next', async () => {
    const relay = await resolverFor(dns);
    try {
      const first = await relay.resolve('all.test', 'MX');
      first.sort((a, b) => a.priority - b.priority).pop();
      assert.deepEqual(await relay.resolve('all.test', 'MX'), [
        { exchange: 'mx2.all.test', priority: 20, type: 'MX' },
        { exchange: 'mx1.all.test', priority: 10, type: 'MX' },
      ]);
    } finally {
      relay.close();
    }
  });
});

describe('how long answers are kept', () => {
  let dns: DnsServer;
  let redis: RedisServer;
  before(async () => {
    [dns, redis] = await Promise.all([DnsServer.start({ negativeTtl: 60 }), RedisServer.start()]);
  });
  after(async () => {
    await Promise.all([dns.close(), redis.kill()]);
  });

  it('a 2 s TTL is asked again once it expires; a 1 day TTL is clamped by maxTtl', async () => {
    dns.add('short.test', { type: 'A', data: '127.0.0.5', ttl: 2 }).add('long.test', { type: 'A', data: '127.0.0.6', ttl: 86_400 });
    const relay = await resolverFor(dns, { minTtl: '1s', maxTtl: '1h', redis: redis.url });
    const clamped = await resolverFor(dns, { minTtl: '1s', maxTtl: '1s' });
    const shared = new Redis(redis.port, '127.0.0.1');
    try {
      for (let i = 0; i < 3; i++) {
        assert.deepEqual(await relay.resolve('short.test', 'A'), ['127.0.0.5']);
        assert.deepEqual(await relay.resolve('long.test', 'A'), ['127.0.0.6']);
      }
      assert.deepEqual(await clamped.resolve('long.test', 'A'), ['127.0.0.6']);
      assert.equal(dns.count('short.test', 'A'), 1);
      assert.equal(dns.count('long.test', 'A'), 2, 'once for each resolver');
      const short = await shared.pttl('hygiene-relay:dns:v1:A:short.test');
      const long = await shared.pttl('hygiene-relay:dns:v1:A:long.test');
      assert.ok(short > 0 && short <= 2000, `short.test kept ${short} ms in Redis`);
      assert.ok(long > 3_590_000 && long <= 3_600_000, `long.test kept ${long} ms in Redis, not a day`);

      // Time passing is what is under test here: both entries must lapse.
      await delay(2100);
      await relay.resolve('short.test', 'A');
      await relay.resolve('long.test', 'A');
      await clamped.resolve('long.test', 'A');
      assert.equal(dns.count('short.test', 'A'), 2, 'asked again after its TTL');
      assert.equal(dns.count('long.test', 'A'), 3, 'the 1 h copy is still good; the 1 s clamp lapsed');
    } finally {
      relay.close();
      clamped.close();
      shared.disconnect();
    }
  });

  it('NXDOMAIN and NODATA are cached (for the SOA TTL, capped by negativeTtl); SERVFAIL never is', async () => {
    dns.add('exists.test', { type: 'A', data: '127.0.0.9' }).fault('flaky.test', 'A', 'servfail');
    const relay = await resolverFor(dns, { negativeTtl: '30s', redis: redis.url });
    const shared = new Redis(redis.port, '127.0.0.1');
    try {
      for (let i = 0; i < 3; i++) {
        await assert.rejects(relay.resolve('nowhere.test', 'A'), { code: 'ENOTFOUND', hostname: 'nowhere.test' });
        await assert.rejects(relay.resolve('exists.test', 'MX'), { code: 'ENODATA' });
        await assert.rejects(relay.resolve('flaky.test', 'A'), { code: 'ESERVFAIL' });
      }
      assert.equal(dns.count('nowhere.test', 'A'), 1);
      assert.equal(dns.count('exists.test', 'MX'), 1);
      assert.equal(dns.count('flaky.test', 'A'), 3);
      const negative = await shared.pttl('hygiene-relay:dns:v1:A:nowhere.test');
      assert.ok(negative > 25_000 && negative <= 30_000, `NXDOMAIN kept ${negative} ms: negativeTtl caps the SOA's 60 s`);
      assert.equal(await shared.exists('hygiene-relay:dns:v1:A:flaky.test'), 0);
      dns.fault('flaky.test', 'A', null).add('flaky.test', { type: 'A', data: '127.0.0.4' });
      assert.deepEqual(await relay.resolve('flaky.test', 'A'), ['127.0.0.4'], 'the server recovered: the answer comes at once');
    } finally {
      relay.close();
      shared.disconnect();
    }
  });

  it('200 concurrent lookups of one uncached name make one query', async () => {
    dns.add('burst.test', { type: 'TXT', data: 'v=spf1 -all' });
    const relay = await resolverFor(dns);
    try {
      const answers = await Promise.all(Array.from({ length: 200 }, () => relay.resolve('burst.test', 'TXT')));
      assert.ok(answers.every((answer) => JSON.stringify(answer) === '[["v=spf1 -all"]]'));
      assert.equal(dns.count('burst.test', 'TXT'), 1);
      const memory = relay.counts().filter((c) => c.level === 'memory' && c.rrtype === 'TXT');
      assert.deepEqual(memory.map((c) => [c.result, c.count]).sort(), [['miss', 200]], 'all 200 missed the in-process level, and shared one query');
    } finally {
      relay.close();
    }
  });
});

describe('Redis trouble never stops a lookup', () => {
  it('garbage under our key is ignored with one warning; a stalled Redis is bounded by redisTimeout', async () => {
    const [dns, redis] = await Promise.all([DnsServer.start(), RedisServer.start()]);
    dns.add('garbage.test', { type: 'A', data: '127.0.0.3' }).add('stalled.test', { type: 'A', data: '127.0.0.4' });
    const logs = new LogCapture();
    const relay = await resolverFor(dns, { redis: redis.url, redisTimeout: '100ms' }, logs);
    const shared = new Redis(redis.port, '127.0.0.1');
    try {
      await shared.set('hygiene-relay:dns:v1:A:garbage.test', '{"x":99999999999999,"r":[1,2]}');
      assert.deepEqual(await relay.resolve('garbage.test', 'A'), ['127.0.0.3']);
      assert.equal(logs.records.filter((r) => r.level === 'warn' && /unreadable entry/.test(String(r.msg))).length, 1);
      assert.equal(await shared.get('hygiene-relay:dns:v1:A:garbage.test').then((v) => JSON.parse(v!).r[0]), '127.0.0.3', 'replaced by the real answer');

      redis.pause();
      assert.deepEqual(await relay.resolve('stalled.test', 'A'), ['127.0.0.4']);
      await assert.rejects(relay.resolve('missing.test', 'A'), { code: 'ENOTFOUND' });
      assert.equal(logs.records.filter((r) => r.msg === OUTAGE).length, 1);
      // A stall never drops the connection: the first command that works again ends the outage.
      redis.resume();
      await relay.resolve('after.test', 'A').catch(() => undefined);
      assert.ok(logs.records.some((r) => r.msg === 'DNS cache: Redis is back'));
    } finally {
      redis.resume();
      relay.close();
      shared.disconnect();
      await Promise.all([dns.close(), redis.kill()]);
    }
  });
});

describe('Redis deployments: Sentinel and Cluster', () => {
  let dns: DnsServer;
  before(async () => {
    dns = await DnsServer.start();
    dns.add('gmail.test', { type: 'MX', data: { preference: 5, exchange: 'gmail-smtp-in.l.google.test' } });
  });
  after(async () => dns.close());

  /** Two replicas on `redis`: the second finds the first's answer and asks DNS nothing. */
  async function sharedBetweenReplicas(redis: Record<string, unknown>) {
    dns.resetLog();
    const [first, second] = [await resolverFor(dns, { redis }), await resolverFor(dns, { redis })];
    try {
      const answer = await first.resolve('gmail.test', 'MX');
      assert.deepEqual(await second.resolve('gmail.test', 'MX'), answer);
      assert.equal(dns.count('gmail.test', 'MX'), 1);
      assert.deepEqual(second.counts().filter((c) => c.level === 'redis').map((c) => [c.result, c.count]), [['hit', 1]]);
    } finally {
      first.close();
      second.close();
    }
  }

  it('finds the master through Sentinel', async () => {
    const master = await RedisServer.start();
    const sentinel = await RedisServer.sentinel('relaycache', master);
    try {
      await sharedBetweenReplicas({ sentinels: [`127.0.0.1:${sentinel.port}`], name: 'relaycache' });
    } finally {
      await Promise.all([sentinel.kill(), master.kill()]);
    }
  });

  it('spreads over a Cluster', async () => {
    const nodes = await RedisServer.cluster();
    try {
      await sharedBetweenReplicas({ cluster: nodes.map((node) => `127.0.0.1:${node.port}`) });
    } finally {
      await Promise.all(nodes.map((node) => node.kill()));
    }
  });
});

describe('the relay with its DNS cache', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-dns-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('ten messages ask each question once; a second relay process sharing Redis asks none of them again', async () => {
    const [internet, redis] = await Promise.all([Internet.start({ verify: false }), RedisServer.start()]);
    const key = makeKey(dir, 'example.test', 's1', 'rsa', { dns: internet.dns });
    internet.dns.add('_dmarc.example.test', { type: 'TXT', data: 'v=DMARC1; p=reject' });
    const config = internet.relayConfig({
      dns: internet.dnsSettings({ redis: redis.url }),
      domains: { 'example.test': { dkim: [{ selector: 's1', key: key.file }] } },
    });
    const relays: RelayProcess[] = [];
    try {
      relays.push(await RelayProcess.start(path.join(dir, 'first.yaml'), config));
      // doctor's checks at start-up ask DNS afresh, on purpose: what the messages ask is counted from here.
      await relays[0].waitFor((r) => String(r.msg).startsWith('DNS checks:'));
      internet.dns.resetLog();
      for (let i = 0; i < 10; i++) {
        const sent = await send(relays[0].port, 'alice@example.test', ['bob@gmail.test'], message({ subject: `first ${i}` }));
        assert.equal(sent.data?.code, 250, JSON.stringify(sent));
      }
      const asked = new Map<string, number>();
      for (const q of internet.dns.queries) asked.set(`${q.type} ${q.name}`, (asked.get(`${q.type} ${q.name}`) ?? 0) + 1);
      for (const question of ['MX gmail.test', 'A mx.gmail.test']) {
        assert.equal(asked.get(question), 1, `${question}: ${JSON.stringify([...asked])}`);
      }
      // doctor asked these afresh and cached what it got (both levels): the messages ask them never.
      for (const question of ['TXT example.test', 'TXT s1._domainkey.example.test', 'TXT _dmarc.example.test']) {
        assert.equal(asked.get(question), undefined, `${question}: ${JSON.stringify([...asked])}`);
      }
      assert.deepEqual([...asked].filter(([, count]) => count > 1), [], 'no question asked twice');

      relays.push(await RelayProcess.start(path.join(dir, 'second.yaml'), config));
      await relays[1].waitFor((r) => String(r.msg).startsWith('DNS checks:'));
      internet.dns.resetLog();
      for (let i = 0; i < 10; i++) {
        const sent = await send(relays[1].port, 'alice@example.test', ['bob@gmail.test'], message({ subject: `second ${i}` }));
        assert.equal(sent.data?.code, 250, JSON.stringify(sent));
      }
      assert.deepEqual(internet.dns.queries, [], 'the second relay found every answer in Redis');
      const delivered = await internet.destination('gmail.test').waitForMessages(20);
      assert.equal(delivered.length, 20);
    } finally {
      await Promise.all(relays.map((relay) => relay.stop()));
      await Promise.all([internet.close(), redis.kill()]);
    }
  });

  it('Redis killed in the middle of 200 messages: all are relayed, one warning; restarted, the cache is used again', async () => {
    const redis = await RedisServer.start();
    const domains = Array.from({ length: 205 }, (_, i) => `d${i}.test`);
    const world = await World.start({
      verify: false,
      config: (internet) => {
        // Each message goes to a domain of its own, so each needs a lookup past the in-process level.
        for (const domain of domains) internet.dns.add(domain, { type: 'MX', data: { preference: 10, exchange: 'mx.gmail.test' } });
        // 200 messages from one sender within a minute: over the abuse guard's default, which is not what this tests.
        return { dns: internet.dnsSettings({ redis: redis.url }), abuse: { limits: { perMinute: false, messages: { perMinute: false } } } };
      },
    });
    const shared = new Redis(redis.port, '127.0.0.1', { lazyConnect: true });
    let restarted: RedisServer | undefined;
    try {
      // Five internal servers sending at once; Redis dies when the 100th message starts.
      const codes: number[] = [];
      let next = 0;
      await Promise.all(
        Array.from({ length: 5 }, async () => {
          for (let i = next++; i < 200; i = next++) {
            if (i === 100) await redis.kill();
            const sent = await send(world.port, 'alice@example.test', [`bob@${domains[i]}`], message({ subject: `outage ${i}` }));
            codes[i] = sent.data?.code ?? sent.rcpts[0]?.code ?? sent.mail.code;
          }
        }),
      );
      assert.deepEqual(codes, Array(200).fill(250));
      assert.equal((await world.destination('gmail.test').waitForMessages(200)).length, 200, 'none lost');
      assert.equal(world.logs.records.filter((r) => r.msg === OUTAGE).length, 1);
      const redisMx = world.relay.dnsCounts().filter((c) => c.level === 'redis' && c.rrtype === 'MX');
      assert.equal(redisMx.reduce((sum, c) => sum + c.count, 0), 200, 'every MX lookup went past the in-process level to Redis (or its outage)');

      restarted = await RedisServer.start(redis.port);
      await world.logs.waitFor((r) => r.msg === 'DNS cache: Redis is back');
      const sent = await send(world.port, 'alice@example.test', ['bob@d200.test'], message({ subject: 'after the outage' }));
      assert.equal(sent.data?.code, 250);
      await shared.connect();
      assert.equal(await shared.exists('hygiene-relay:dns:v1:MX:d200.test'), 1, 'written to the restarted Redis');
    } finally {
      shared.disconnect();
      await world.close();
      await Promise.all([redis.kill(), restarted?.kill()]);
    }
  });
});
