import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hashPassword } from '../src/inbound/index.ts';
import { RawClient, type ClientReply } from './harness/client.ts';
import { RelayProcess } from './harness/process.ts';
import { RedisServer } from './harness/redis.ts';
import { send } from './harness/send.ts';
import { Internet, message, World } from './harness/world.ts';

const plain = (user: string, password: string) => `AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`;

/** Connects from `localAddress` and waits for the greeting (220, or the 421 that refuses the slot). */
async function connect(port: number, localAddress: string): Promise<{ client: RawClient; greeting: ClientReply }> {
  return RawClient.connect(port, { localAddress });
}

describe('strangers cannot take the slots of the relay’s own clients', () => {
  let world: World;
  before(async () => {
    world = await World.start({ config: { limits: { maxClients: 3, strangers: { total: 8, perAddress: 2 } } } });
  });
  after(async () => world.close());

  it('300 silent connections from outside clients.networks: 8 get a greeting, the rest 421; the internal server still relays, three times of three', async () => {
    // 30 addresses × 10 connections: past the per-address budget and the total.
    const addresses = Array.from({ length: 30 }, (_, i) => `127.0.2.${i + 1}`);
    const strangers = await Promise.all(addresses.flatMap((address) => Array.from({ length: 10 }, () => connect(world.port, address))));
    const greeted = strangers.filter((s) => s.greeting.code === 220);
    const refused = strangers.filter((s) => s.greeting.code === 421);
    assert.equal(greeted.length, 8);
    assert.equal(refused.length, 292);
    assert.match(refused[0].greeting.text, /^4\.7\.0 too many connections from outside the trusted networks/);
    for (let i = 0; i < 3; i++) {
      const sent = await send(world.port, 'alice@example.test', ['bob@gmail.test'], message({ subject: `through the flood ${i}` }));
      assert.equal(sent.data?.code, 250, JSON.stringify(sent));
    }
    // The flood is summarised in the log, not one record per connection.
    const records = world.logs.records.filter((r) => r.msg === 'refused' && r.stage === 'session');
    assert.ok(records.length <= addresses.length, `${records.length} refusal records`);
    for (const { client } of greeted) client.destroy();
  });
});

/** Connects and sends EHLO at once, before any greeting: the replies, until the relay has answered the EHLO or closed. */
function talkFirst(port: number, localAddress: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let heard = '';
    const socket = net.connect({ port, host: '127.0.0.1', localAddress }, () => socket.write('EHLO eager.example.test\r\n'));
    socket.on('data', (chunk) => {
      heard += chunk.toString('latin1');
      if (/^250 /m.test(heard)) socket.end();
    });
    socket.on('close', () => resolve(heard));
    socket.on('error', reject);
  });
}

describe('the greeting', () => {
  let world: World;
  before(async () => {
    world = await World.start();
  });
  after(async () => world.close());

  it('comes at once for a trusted network: its EHLO, sent before it, is answered; a stranger talking first is an early talker', async () => {
    const trusted = await talkFirst(world.port, '127.0.0.1');
    assert.match(trusted, /^220 [^\r]*\r\n250-/);
    const stranger = await talkFirst(world.port, '127.0.5.1');
    assert.match(stranger, /^421 [^\r]*You talk too soon/);
  });
});

describe('tricklers and long sessions are ended', () => {
  let world: World;
  before(async () => {
    world = await World.start({ config: { limits: { clientTimeout: '1s', maxSessionTime: '3s', strangers: { sessionTime: '1500ms' } } } });
  });
  after(async () => world.close());

  it('a client sending one byte every 100 ms never completes a command within clientTimeout: 421 4.4.2 and closed', async () => {
    const { client } = await RawClient.connect(world.port);
    const started = Date.now();
    const told = client.reply();
    const bytes = 'EHLO a-very-slow-client.example.test and more and more and more';
    let i = 0;
    const trickle = setInterval(() => client.write(bytes[i++ % bytes.length]), 100);
    try {
      const reply = await told;
      assert.equal(reply.code, 421);
      assert.match(reply.text, /^4\.4\.2 Timeout: no complete command within 1 s/);
      await client.closed;
      // Ten bytes a second would have kept smtp-server's idle timeout from ever firing.
      assert.ok(Date.now() - started < 5000);
    } finally {
      clearInterval(trickle);
    }
  });

  it('a stranger that does not authenticate within strangers.sessionTime is shown the door', async () => {
    const { client } = await RawClient.connect(world.port, { localAddress: '127.0.3.1' });
    await client.command('EHLO stranger.example.test');
    const told = client.reply();
    const noop = setInterval(() => client.write('NOOP\r\n'), 200);
    try {
      // NOOP replies are claimed by nobody: the first unasked reply that is not a 250 is the 421.
      let reply = await told;
      while (reply.code === 250) reply = await client.reply();
      assert.equal(reply.code, 421);
      assert.match(reply.text, /^4\.7\.0 Authenticate within 1\.5 s or leave: 127\.0\.3\.1 is not in a trusted network/);
      await client.closed;
    } finally {
      clearInterval(noop);
    }
  });

  it('no session outlives maxSessionTime, however busy', async () => {
    const { client } = await RawClient.connect(world.port);
    await client.command('EHLO busy.example.test');
    const noop = setInterval(() => client.write('NOOP\r\n'), 200);
    try {
      let reply = await client.reply();
      while (reply.code === 250) reply = await client.reply();
      assert.equal(reply.code, 421);
      assert.match(reply.text, /^4\.4\.2 Session longer than 3 s, closing connection/);
      await client.closed;
    } finally {
      clearInterval(noop);
    }
  });
});

describe('AUTH guessing is limited across connections', () => {
  let dir: string;
  let internet: Internet;
  let password: string;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-auth-'));
    internet = await Internet.start();
    password = await hashPassword('correct horse');
  });
  after(async () => {
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function config(extra: Record<string, unknown> = {}) {
    return internet.relayConfig({
      listeners: [{ host: '127.0.0.1', port: 0, allowInsecureAuth: true }],
      clients: { networks: ['127.0.0.1/32'], users: [{ name: 'mdaemon', password }] },
      limits: { authFailures: { perAddress: 6, perUser: 4, window: '1m', block: '1m' }, ...extra },
    });
  }

  /** One AUTH attempt on a connection of its own, as a guesser that reconnects would make it. */
  async function attempt(port: number, secret: string, localAddress = '127.0.4.1'): Promise<{ reply: ClientReply; ms: number }> {
    const { client } = await RawClient.connect(port, { localAddress });
    try {
      await client.command('EHLO guesser.example.test');
      const started = Date.now();
      const reply = await client.command(plain('mdaemon', secret));
      return { reply, ms: Date.now() - started };
    } finally {
      client.destroy();
    }
  }

  it('reconnecting does not reset the count: each failure waits longer, then 454 4.7.0 for the right password too, with one record', async () => {
    const relay = await RelayProcess.start(path.join(dir, 'one.yaml'), config());
    try {
      const failures = [];
      for (let i = 0; i < 4; i++) failures.push(await attempt(relay.port, `guess ${i}`));
      assert.deepEqual(failures.map((f) => f.reply.code), [535, 535, 535, 535]);
      // 250 ms, then twice as long each time (lower bounds: timers never fire early).
      assert.ok(failures[2].ms >= 1000 && failures[3].ms >= 2000, JSON.stringify(failures.map((f) => f.ms)));
      const right = await attempt(relay.port, 'correct horse');
      assert.equal(right.reply.code, 454);
      assert.equal(right.reply.text, '4.7.0 Too many failed authentication attempts; try again later');
      // From another address: the user's limit holds it, and the reply does not say which limit.
      const elsewhere = await attempt(relay.port, 'correct horse', '127.0.4.2');
      assert.deepEqual(elsewhere.reply, right.reply);
      const episodes = relay.records.filter((r) => String(r.msg).startsWith('AUTH guessing'));
      assert.deepEqual(episodes.map((r) => [r.user, r.failures]), [['mdaemon', 4]]);
      // A client of a trusted network that needs no AUTH still relays.
      assert.equal((await send(relay.port, 'alice@example.test', ['bob@gmail.test'], message())).data?.code, 250);
    } finally {
      await relay.stop();
    }
  });

  it('two relays on one Redis share the count', async () => {
    const redis = await RedisServer.start();
    const [a, b] = await Promise.all([
      RelayProcess.start(path.join(dir, 'a.yaml'), config({ redis: redis.url })),
      RelayProcess.start(path.join(dir, 'b.yaml'), config({ redis: redis.url })),
    ]);
    try {
      for (let i = 0; i < 2; i++) assert.equal((await attempt(a.port, `guess a${i}`, '127.0.4.3')).reply.code, 535);
      for (let i = 0; i < 2; i++) assert.equal((await attempt(b.port, `guess b${i}`, '127.0.4.3')).reply.code, 535);
      assert.equal((await attempt(b.port, 'correct horse', '127.0.4.3')).reply.code, 454);
      assert.equal((await attempt(a.port, 'correct horse', '127.0.4.3')).reply.code, 454);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
      await redis.kill();
    }
  });
});
