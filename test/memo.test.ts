import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it, mock } from 'node:test';
import { ConfigError, parseConfig } from '../src/config/index.ts';
import { createLogger } from '../src/observability/index.ts';
import { createMemo } from '../src/proxy/index.ts';
import { startRelay, type Relay } from '../src/relay.ts';
import { RedisServer } from './harness/redis.ts';
import { send } from './harness/send.ts';
import { LogCapture, message, World } from './harness/world.ts';

const PERSISTENCE_WARNING = /^delivery memo: Redis may not keep the memo across its restart/;
const KEY = { message: 'b'.repeat(64), sender: 'alice@example.test', recipient: 'bob@gmail.test' };

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

describe('delivery memo across a Redis restart', () => {
  it('what is recorded while Redis restarts reaches it once it is back, for the other replicas to find', async () => {
    const redis = await RedisServer.start();
    const config = parseConfig({ egress: [{ ip: '127.0.0.2' }], memo: { redis: redis.url } }).memo;
    const [writer, reader] = [createMemo(config, createLogger('info', new LogCapture())), createMemo(config, createLogger('info', new LogCapture()))];
    let again: RedisServer | undefined;
    try {
      await Promise.all([writer.ready(), reader.ready()]);
      // Killed, so the write meets a lost connection; the same server started again within the grace.
      await redis.kill();
      const recorded = writer.record([{ key: KEY, state: 'delivered' }]);
      again = await RedisServer.start(redis.port);
      await recorded;
      // The reader's own connection comes back within its grace too: what it reads is Redis's.
      assert.deepEqual(await reader.lookup([KEY]), ['delivered']);
    } finally {
      await Promise.all([writer.close(), reader.close()]);
      await again?.kill();
    }
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
      // The test servers keep nothing on disk: each memo names every master once, and warns of nothing else.
      const warnings = logs.records.filter((r) => r.level === 'warn');
      assert.equal(warnings.length, 2);
      for (const warning of warnings) {
        assert.match(String(warning.msg), PERSISTENCE_WARNING);
        assert.deepEqual((warning.servers as { server: string }[]).map((s) => s.server).sort(), nodes.map((node) => `127.0.0.1:${node.port}`).sort());
      }
    } finally {
      await Promise.all([first.close(), second.close()]);
      await Promise.all(nodes.map((node) => node.kill()));
    }
  });
});

describe('whether Redis keeps the memo across its own restart', () => {
  /** The records a memo on a redis-server started with `args` logs at start. */
  async function startWith(args: string[]): Promise<Record<string, unknown>[]> {
    const dir = mkdtempSync(path.join(tmpdir(), 'memo-redis-'));
    const redis = await RedisServer.start(undefined, ['--dir', dir, ...args]);
    const logs = new LogCapture();
    const memo = createMemo(parseConfig({ egress: [{ ip: '127.0.0.2' }], memo: { redis: redis.url } }).memo, createLogger('info', logs));
    try {
      await memo.ready();
      return logs.records;
    } finally {
      await memo.close();
      await redis.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('warns once when it persists nothing (save "", appendonly no)', async () => {
    const warnings = (await startWith([])).filter((r) => PERSISTENCE_WARNING.test(String(r.msg)));
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0].level, 'warn');
    assert.deepEqual((warnings[0].servers as { persistence: string }[]).map((s) => s.persistence), ['appendonly no, save ""']);
  });

  it('says nothing with AOF on, or RDB snapshots scheduled', async () => {
    assert.deepEqual((await startWith(['--appendonly', 'yes'])).filter((r) => r.level === 'warn'), []);
    assert.deepEqual((await startWith(['--save', '3600 1'])).filter((r) => r.level === 'warn'), []);
  });

  it('with CONFIG disabled (as managed services do) asks INFO persistence: AOF on is enough, otherwise it cannot tell and says so', async () => {
    const noConfig = ['--rename-command', 'CONFIG', ''];
    assert.deepEqual((await startWith([...noConfig, '--appendonly', 'yes'])).filter((r) => r.level === 'warn'), []);
    const warnings = (await startWith(noConfig)).filter((r) => PERSISTENCE_WARNING.test(String(r.msg)));
    assert.equal(warnings.length, 1);
    assert.match((warnings[0].servers as { persistence: string }[])[0].persistence, /CONFIG not allowed; INFO persistence says aof_enabled:0/);
  });
});

describe('delivery memo on disk (without Redis)', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'memo-store-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const open = async (file: string, memo: Record<string, unknown> = {}) => {
    const store = createMemo(parseConfig({ egress: [{ ip: '127.0.0.2' }], memo: { path: file, ...memo } }).memo, createLogger('silent'));
    await store.ready();
    return store;
  };

  it('keeps what it recorded after it is closed and opened again, in a file only the relay can read', async () => {
    const file = path.join(dir, 'reopen.sqlite');
    const first = await open(file);
    await first.record([{ key: KEY, state: 'delivered' }]);
    await first.close();
    const again = await open(file);
    try {
      assert.deepEqual(await again.lookup([KEY, { ...KEY, recipient: 'carol@outlook.test' }]), ['delivered', undefined]);
      // RFC 5321 §2.4: the domain is case-insensitive, the local part is not.
      assert.deepEqual(await again.lookup([{ ...KEY, recipient: 'bob@GMAIL.test' }, { ...KEY, recipient: 'Bob@gmail.test' }]), ['delivered', undefined]);
      assert.equal(statSync(file).mode & 0o777, 0o600);
    } finally {
      await again.close();
    }
  });

  it('is shared by every memo that opens the same file (the relays of one host)', async () => {
    const file = path.join(dir, 'shared.sqlite');
    const [one, two] = [await open(file), await open(file)];
    try {
      await one.record([{ key: KEY, state: 'bounced' }]);
      assert.deepEqual(await two.lookup([KEY]), ['bounced']);
    } finally {
      await Promise.all([one.close(), two.close()]);
    }
  });

  it('forgets an entry after memo.ttl', async (t) => {
    t.after(() => mock.timers.reset());
    mock.timers.enable({ apis: ['Date'], now: Date.now() });
    const memo = await open(path.join(dir, 'ttl.sqlite'), { ttl: '1h' });
    try {
      await memo.record([{ key: KEY, state: 'delivered' }]);
      mock.timers.tick(60 * 60 * 1000 - 1);
      assert.deepEqual(await memo.lookup([KEY]), ['delivered']);
      mock.timers.tick(1);
      assert.deepEqual(await memo.lookup([KEY]), [undefined]);
    } finally {
      await memo.close();
    }
  });

  it('keeps at most memo.maxEntries, the newest', async () => {
    const memo = await open(path.join(dir, 'bound.sqlite'), { maxEntries: 3 });
    try {
      const keys = Array.from({ length: 5 }, (_, i) => ({ ...KEY, recipient: `r${i}@gmail.test` }));
      await memo.record(keys.slice(0, 2).map((key) => ({ key, state: 'delivered' as const })));
      await memo.record(keys.slice(2).map((key) => ({ key, state: 'delivered' as const })));
      assert.deepEqual(await memo.lookup(keys), [undefined, undefined, 'delivered', 'delivered', 'delivered']);
    } finally {
      await memo.close();
    }
  });

  it('a memo.path the relay cannot open stops the start, naming the key', async () => {
    const memo = createMemo(parseConfig({ egress: [{ ip: '127.0.0.2' }], memo: { path: path.join(dir, 'missing', 'memo.sqlite') } }).memo, createLogger('silent'));
    await assert.rejects(memo.ready(), (err: Error) => err instanceof ConfigError && /^memo\.path: cannot open .*missing\/memo\.sqlite \(ENOENT\)$/.test(err.message));
    await memo.close();
    assert.throws(() => parseConfig({ egress: [{ ip: '127.0.0.2' }], memo: { path: 'memo.sqlite' } }), /memo\.path: must be an absolute path/);
  });
});
