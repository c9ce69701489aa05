// Issue 17, holds: a user or envelope sender over a sending limit under abuse.hold is refused
// 550 5.7.1 until an admin releases it with `hygiene-relay abuse release`, through the running
// relay's control socket (the supervisor's with workers; every replica's through Redis).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify } from 'yaml';
import { controlRequest } from '../src/control/index.ts';
import { hashPassword } from '../src/inbound/index.ts';
import { assertHeld, cli, delivered, ISO, list, PASSWORD, release, sendMail } from './harness/abuse.ts';
import { RelayProcess } from './harness/process.ts';
import { parseExposition, type Sample } from './harness/prometheus.ts';
import { RedisServer } from './harness/redis.ts';
import { Internet } from './harness/world.ts';

/** The samples of counter `name` the relay's /metrics exposes now. */
async function metric(relay: RelayProcess, name: string): Promise<Sample[]> {
  const httpPort = relay.records.find((r) => r.msg === 'relay started')!.httpPort as number;
  const response = await fetch(`http://127.0.0.1:${httpPort}/metrics`);
  assert.equal(response.status, 200);
  return (await parseExposition(await response.text())).filter((s) => s.name === name);
}

/** The transaction record (from record `index` on) of the message to `address`, once the relay wrote it. */
const transactionTo = (relay: RelayProcess, address: string, index: number) =>
  relay.waitFor((r) => r.msg === 'transaction' && (r.recipients as { address: string }[]).some((recipient) => recipient.address === address), index);


describe('abuse.hold: a held sender is refused until `hygiene-relay abuse release`, then sends again', { timeout: 120_000 }, () => {
  let dir: string;
  let internet: Internet;
  let redis: RedisServer;
  let password: string;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-hold-'));
    [internet, redis, password] = await Promise.all([Internet.start(), RedisServer.start(), hashPassword(PASSWORD)]);
  });
  after(async () => {
    await Promise.all([internet.close(), redis.kill()]);
    rmSync(dir, { recursive: true, force: true });
  });

  const gmail = () => internet.destination('gmail.test');

  /**
   * A relay config named `name` (its own control socket and state file, so no test sees
   * another's holds): the user `mailer` may send 5 recipients an hour and is held over that.
   */
  const config = (name: string, overrides: Record<string, unknown> = {}) =>
    internet.relayConfig({
      listeners: [{ host: '127.0.0.1', port: 0, allowInsecureAuth: true }],
      clients: { networks: ['127.0.0.1/32'], users: [{ name: 'mailer', password }] },
      control: { socket: path.join(dir, `${name}.sock`) },
      memo: { path: path.join(dir, `${name}.sqlite`) },
      abuse: { hold: true, overrides: [{ user: 'mailer', perHour: 5 }] },
      ...overrides,
    });
  const start = (name: string, overrides?: Record<string, unknown>) => RelayProcess.start(path.join(dir, `${name}.yaml`), config(name, overrides));
  const fileOf = (name: string) => path.join(dir, `${name}.yaml`);

  const WHY = 'over its limit of 5 recipients per hour';

  it('a user over its limit: 550 5.7.1 for that recipient, the later ones and later connections; listed; released; then its mail goes again', async () => {
    gmail().received.length = 0;
    const relay = await start('one');
    const file = fileOf('one');
    try {
      for (let i = 0; i < 5; i++) await delivered(relay.port, 'mailer@example.test', `victim${i}@gmail.test`, 'mailer');
      assert.equal(gmail().received.length, 5);

      // The sixth recipient goes over: held at once, and the next recipient of that transaction too.
      const since = assertHeld(await sendMail(relay.port, 'mailer@example.test', ['victim5@gmail.test', 'victim6@gmail.test'], { user: 'mailer' }), 'user mailer', WHY);
      // Held, not limited: a new connection, another envelope sender of the same user, still 550.
      assert.equal(assertHeld(await sendMail(relay.port, 'mailer@example.test', ['victim7@gmail.test'], { user: 'mailer' }), 'user mailer', WHY), since);
      assert.equal(assertHeld(await sendMail(relay.port, 'billing@example.test', ['victim8@gmail.test'], { user: 'mailer' }), 'user mailer', WHY), since);
      assert.equal(gmail().received.length, 5, 'nothing more reached the destination');
      assert.deepEqual((await metric(relay, 'hygiene_relay_abuse_held_recipients_total')).map((s) => s.value), [4]);

      const record = await relay.waitFor((r) => r.msg === 'abuse');
      assert.equal(record.level, 'warn');
      assert.equal(record.reason, 'limit');
      assert.equal(record.user, 'mailer');
      assert.deepEqual((record.over as { counted: string; unit: string; window: string; limit: number; count: number }[]).map((o) => [o.counted, o.unit, o.window, o.limit, o.count]), [['user', 'recipients', 'hour', 5, 6]]);
      assert.match(String(record.action), /^held: .*`hygiene-relay abuse release mailer`$/);

      assert.equal(await list(file), `user mailer\theld since ${since}: ${WHY}\n`);
      const json = await cli('list', '--json', '--config', file);
      assert.equal(json.code, 0, json.stderr);
      const holds = JSON.parse(json.stdout) as { kind: string; who: string; since: number; why: string }[];
      assert.deepEqual(holds.map(({ kind, who, why }) => ({ kind, who, why })), [{ kind: 'user', who: 'mailer', why: WHY }]);
      assert.equal(new Date(holds[0].since).toISOString().replace(/\.\d+Z$/, 'Z'), since);

      assert.equal(await release(file, 'mailer'), `released user mailer (held since ${since}: ${WHY})\n`);
      const released = await relay.waitFor((r) => r.msg === 'abuse released');
      assert.deepEqual([released.level, released.kind, released.who, released.heldSince, released.why], ['warn', 'user', 'mailer', since, WHY]);

      // Released, its counts start afresh: the very next message goes, well within the minute.
      await delivered(relay.port, 'mailer@example.test', 'after-release@gmail.test', 'mailer');
      assert.equal(gmail().received.length, 6);
      assert.deepEqual(gmail().received[5].envelope.rcptTo, ['after-release@gmail.test']);
      assert.equal(await list(file), 'no sender is held\n');

      const again = await cli('release', 'mailer', '--config', file);
      assert.deepEqual(again, { code: 1, stdout: '', stderr: 'hygiene-relay: mailer is not held (hygiene-relay abuse list shows who is)\n' });

      assert.equal(relay.records.filter((r) => r.msg === 'abuse').length, 1, 'one abuse record for the episode');
      assert.equal(relay.records.filter((r) => r.msg === 'abuse released').length, 1);
    } finally {
      await relay.stop();
    }
    // The relay gone, nobody answers: exit 1, one line.
    for (const args of [['list'], ['release', 'mailer']]) {
      const result = await cli(...args, '--config', file);
      assert.equal(result.code, 1);
      assert.equal(result.stdout, '');
      assert.match(result.stderr, /^hygiene-relay: cannot reach the relay at \S+one\.sock: (ENOENT|ECONNREFUSED) \(is it running, with this configuration\?\)\n$/);
    }
  });

  it('two replicas on one Redis: held through A, refused on B, listed and released through B, sends again through A', async () => {
    gmail().received.length = 0;
    // Each its own state file: what they share is Redis.
    const [a, b] = await Promise.all([start('replica-a', { limits: { redis: redis.url } }), start('replica-b', { limits: { redis: redis.url } })]);
    try {
      for (let i = 0; i < 5; i++) await delivered(i % 2 ? b.port : a.port, 'mailer@example.test', `victim${i}@gmail.test`, 'mailer');
      const since = assertHeld(await sendMail(a.port, 'mailer@example.test', ['victim5@gmail.test'], { user: 'mailer' }), 'user mailer', WHY);
      assert.equal(assertHeld(await sendMail(b.port, 'mailer@example.test', ['victim6@gmail.test', 'victim7@gmail.test'], { user: 'mailer' }), 'user mailer', WHY), since);
      assert.equal(gmail().received.length, 5);

      assert.equal(await list(fileOf('replica-b')), `user mailer\theld since ${since}: ${WHY}\n`);
      assert.equal(await release(fileOf('replica-b'), 'mailer'), `released user mailer (held since ${since}: ${WHY})\n`);
      await b.waitFor((r) => r.msg === 'abuse released');
      assert.equal(await list(fileOf('replica-a')), 'no sender is held\n');

      await delivered(a.port, 'mailer@example.test', 'after-release@gmail.test', 'mailer');
      await delivered(b.port, 'mailer@example.test', 'after-release-b@gmail.test', 'mailer');
      assert.equal(gmail().received.length, 7);

      await a.waitFor((r) => r.msg === 'abuse');
      const episodes = [...a.records, ...b.records].filter((r) => r.msg === 'abuse');
      assert.equal(episodes.length, 1, JSON.stringify(episodes));
      assert.equal(a.records.filter((r) => r.msg === 'abuse released').length + b.records.filter((r) => r.msg === 'abuse released').length, 1);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  it('workers: 2 without Redis: both workers refuse the held user; list and release through the supervisor; both let it send again', async () => {
    gmail().received.length = 0;
    const relay = await start('workers', { workers: 2 });
    const file = fileOf('workers');
    try {
      for (let i = 0; i < 5; i++) await delivered(relay.port, 'mailer@example.test', `victim${i}@gmail.test`, 'mailer');
      const since = assertHeld(await sendMail(relay.port, 'mailer@example.test', ['victim5@gmail.test'], { user: 'mailer' }), 'user mailer', WHY);
      // Connections go to the workers in turn: four more reach both.
      for (let i = 0; i < 4; i++) assert.equal(assertHeld(await sendMail(relay.port, 'mailer@example.test', [`held${i}@gmail.test`], { user: 'mailer' }), 'user mailer', WHY), since);
      assert.equal(gmail().received.length, 5);
      // Each worker records the first recipient it refused from 127.0.0.1: both refused as held.
      const heldRefusal = (r: Record<string, unknown>) => r.msg === 'refused' && /is held by the relay's abuse guard/.test(String(r.reply));
      const { worker } = await relay.waitFor(heldRefusal);
      await relay.waitFor((r) => heldRefusal(r) && r.worker !== worker);

      assert.equal(await list(file), `user mailer\theld since ${since}: ${WHY}\n`, 'one line, though both workers answered');
      const seen = relay.records.length;
      assert.equal(await release(file, 'mailer'), `released user mailer (held since ${since}: ${WHY})\n`);
      await relay.waitFor((r) => r.msg === 'abuse released', seen);
      assert.equal(await list(file), 'no sender is held\n');

      const after = [0, 1, 2, 3].map((i) => `after-release${i}@gmail.test`);
      for (const to of after) await delivered(relay.port, 'mailer@example.test', to, 'mailer');
      assert.equal(gmail().received.length, 9);
      const records = await Promise.all(after.map((to) => transactionTo(relay, to, seen)));
      assert.equal(new Set(records.map((r) => r.worker)).size, 2, 'both workers took mail after the release');
      assert.equal(relay.records.filter((r) => r.msg === 'abuse').length, 1, 'one episode, though both workers refused');
    } finally {
      await relay.stop();
    }
  });

  it('an unauthenticated internal server: the envelope sender over its limit is held, another sender from the same address still goes', async () => {
    gmail().received.length = 0;
    // No user: the trusted network alone; 3 recipients an hour per envelope sender, the address's limits untouched.
    const relay = await start('sender', { clients: { networks: ['127.0.0.1/32'] }, abuse: { hold: true, limits: { perHour: 3 } } });
    const file = fileOf('sender');
    const why = 'over its limit of 3 recipients per hour';
    try {
      const first = await sendMail(relay.port, 'alice@example.test', ['a1@gmail.test', 'a2@gmail.test', 'a3@gmail.test']);
      assert.deepEqual([...first.rcpts.map((r) => r.code), first.data?.code], [250, 250, 250, 250]);
      const since = assertHeld(await sendMail(relay.port, 'alice@example.test', ['a4@gmail.test', 'a5@gmail.test']), 'sender <alice@example.test>', why);
      assert.equal(assertHeld(await sendMail(relay.port, 'alice@example.test', ['a6@gmail.test']), 'sender <alice@example.test>', why), since);
      // The client address is never held: the server's other senders' mail goes.
      await delivered(relay.port, 'bob@example.test', 'b1@gmail.test');
      assert.deepEqual(gmail().received.map((m) => [m.envelope.mailFrom, m.envelope.rcptTo.length]), [['alice@example.test', 3], ['bob@example.test', 1]]);

      const record = await relay.waitFor((r) => r.msg === 'abuse');
      assert.deepEqual([record.reason, record.user, record.client, record.sender], ['limit', undefined, '127.0.0.1', 'alice@example.test']);
      assert.deepEqual((record.over as { counted: string; who: string }[]).map((o) => [o.counted, o.who]), [['sender', 'alice@example.test']]);
      assert.match(String(record.action), /`hygiene-relay abuse release alice@example\.test`$/);

      assert.equal(await list(file), `sender alice@example.test\theld since ${since}: ${why}\n`);
      assert.equal(await release(file, 'alice@example.test'), `released sender alice@example.test (held since ${since}: ${why})\n`);
      await relay.waitFor((r) => r.msg === 'abuse released');
      await delivered(relay.port, 'alice@example.test', 'a7@gmail.test');
      assert.equal(gmail().received.length, 3);
    } finally {
      await relay.stop();
    }
  });

  it('messages per minute: the 4th message is refused whole, 451 4.7.1 naming messages per minute; the metric and the record say messages', async () => {
    gmail().received.length = 0;
    const relay = await start('messages', {
      abuse: { limits: { perMinute: 1000, perHour: 1000, perDay: 1000, messages: { perMinute: 3 } } },
    });
    try {
      for (let i = 0; i < 3; i++) {
        const sent = await sendMail(relay.port, 'mailer@example.test', [`m${i}a@gmail.test`, `m${i}b@gmail.test`], { user: 'mailer' });
        assert.deepEqual([...sent.rcpts.map((r) => r.code), sent.data?.code], [250, 250, 250], JSON.stringify(sent));
      }
      const fourth = await sendMail(relay.port, 'mailer@example.test', ['m3a@gmail.test', 'm3b@gmail.test', 'm3c@gmail.test'], { user: 'mailer' });
      assert.equal(fourth.data, undefined);
      assert.equal(fourth.rcpts.length, 3);
      for (const rcpt of fourth.rcpts) {
        assert.equal(rcpt.code, 451, JSON.stringify(rcpt));
        assert.match(rcpt.text, new RegExp(`^4\\.7\\.1 user mailer is over its limit of 3 messages per minute; try again after ${ISO} \\(in \\d+ s\\)$`));
      }
      assert.deepEqual(gmail().received.map((m) => m.envelope.rcptTo), [0, 1, 2].map((i) => [`m${i}a@gmail.test`, `m${i}b@gmail.test`]));

      const record = await relay.waitFor((r) => r.msg === 'abuse');
      assert.equal(record.reason, 'limit');
      const over = record.over as { counted: string; unit: string; window: string; limit: number; count: number }[];
      assert.deepEqual(over[0], { ...over[0], counted: 'user', unit: 'messages', window: 'minute', limit: 3, count: 4 });
      assert.ok(over.every((o) => o.unit === 'messages'), JSON.stringify(over));
      assert.match(String(record.action), /451 4\.7\.1/);

      const samples = await metric(relay, 'hygiene_relay_abuse_limited_total');
      assert.ok(samples.some((s) => s.labels.kind === 'user' && s.labels.window === 'minute' && s.labels.unit === 'messages' && s.value >= 1), JSON.stringify(samples));
      assert.ok(samples.every((s) => s.labels.unit === 'messages'), JSON.stringify(samples));
      // No hold without abuse.hold.
      assert.equal(await list(fileOf('messages')), 'no sender is held\n');
    } finally {
      await relay.stop();
    }
  });

  it('misuse: one line on stderr; 2 for a command used wrongly or a config without control.socket, 1 when no relay answers', async () => {
    const noSocket = path.join(dir, 'no-socket.yaml');
    writeFileSync(noSocket, stringify(internet.relayConfig({ control: { socket: null } })));
    const nobody = path.join(dir, 'nobody.yaml');
    const nowhere = path.join(dir, 'nobody-listens.sock');
    writeFileSync(nobody, stringify(internet.relayConfig({ control: { socket: nowhere } })));
    const cases: [string[], number, string][] = [
      [[], 2, 'abuse needs a command: list or release; see hygiene-relay abuse --help'],
      [['hold', 'mailer'], 2, 'unknown abuse command "hold": use list or release; see hygiene-relay abuse --help'],
      [['release', '--config', noSocket], 2, 'abuse release needs the sender to release (a user name or an address); see hygiene-relay abuse release --help'],
      [['release', 'a', 'b'], 2, 'abuse release takes one sender, not 2; see hygiene-relay abuse release --help'],
      [['release', 'a b'], 2, '"a b" is no user name or address (it has white space); see hygiene-relay abuse release --help'],
      [['list', 'mailer'], 2, 'unexpected argument "mailer" for abuse list; see hygiene-relay abuse list --help'],
      [['list', '--config', noSocket], 2, 'control.socket is null in the configuration: nothing to reach the relay through'],
      [['release', 'mailer', '--config', noSocket], 2, 'control.socket is null in the configuration: nothing to reach the relay through'],
      [['list', '--config', nobody], 1, `cannot reach the relay at ${nowhere}: ENOENT (is it running, with this configuration?)`],
      [['release', 'mailer', '--config', nobody], 1, `cannot reach the relay at ${nowhere}: ENOENT (is it running, with this configuration?)`],
    ];
    // Each its own CLI process, at once: a second apiece otherwise.
    const results = await Promise.all(cases.map(([args]) => cli(...args)));
    for (const [i, [args, code, line]] of cases.entries()) {
      assert.deepEqual(results[i], { code, stdout: '', stderr: `hygiene-relay: ${line}\n` }, `hygiene-relay abuse ${args.join(' ')}`);
    }
  });
});

describe('abuse guard: releases by many workers at once, and a message refused whole in the metric', { timeout: 120_000 }, () => {
  let dir: string;
  let internet: Internet;
  let password: string;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-hold-bugs-'));
    [internet, password] = await Promise.all([Internet.start(), hashPassword(PASSWORD)]);
  });
  after(async () => {
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const config = (name: string, overrides: Record<string, unknown>) =>
    internet.relayConfig({
      listeners: [{ host: '127.0.0.1', port: 0, allowInsecureAuth: true }],
      clients: { networks: ['127.0.0.1/32'], users: [{ name: 'mailer', password }] },
      control: { socket: path.join(dir, `${name}.sock`) },
      memo: { path: path.join(dir, `${name}.sqlite`) },
      ...overrides,
    });

  it('workers: 2: each release is one `abuse released` record, not one per worker that found the hold', async () => {
    const relay = await RelayProcess.start(path.join(dir, 'race.yaml'), config('race', { workers: 2, abuse: { hold: true, overrides: [{ user: 'mailer', perHour: 1 }] } }));
    const rounds = 10;
    try {
      for (let round = 0; round < rounds; round++) {
        await delivered(relay.port, 'mailer@example.test', `r${round}@gmail.test`, 'mailer');
        assertHeld(await sendMail(relay.port, 'mailer@example.test', [`r${round}-over@gmail.test`], { user: 'mailer' }), 'user mailer', 'over its limit of 1 recipients per hour');
        assert.match(await controlRequest(path.join(dir, 'race.sock'), 'abuse release mailer'), /^ok \[\{"kind":"user","who":"mailer",/);
      }
      // A record written by either worker before the release answered is in before that worker's later transaction records.
      const seen = relay.records.length;
      const last = ['last0@gmail.test', 'last1@gmail.test'];
      // Another sender's: mailer may send one recipient an hour.
      for (const to of last) await delivered(relay.port, 'sync@example.test', to);
      const records = await Promise.all(last.map((to) => transactionTo(relay, to, seen)));
      assert.equal(new Set(records.map((r) => r.worker)).size, 2);
      const released = relay.records.filter((r) => r.msg === 'abuse released');
      assert.equal(released.length, rounds, JSON.stringify(released.map((r) => [r.worker, r.heldSince])));
    } finally {
      await relay.stop();
    }
  });

  it('a message refused whole for its message limit: every recipient answered 451 counts in hygiene_relay_abuse_limited_total', async () => {
    const relay = await RelayProcess.start(path.join(dir, 'metric.yaml'), config('metric', { abuse: { limits: { perMinute: 1000, perHour: 1000, perDay: 1000, messages: { perMinute: 1 } } } }));
    try {
      await delivered(relay.port, 'mailer@example.test', 'first@gmail.test', 'mailer');
      const second = await sendMail(relay.port, 'mailer@example.test', ['s1@gmail.test', 's2@gmail.test', 's3@gmail.test'], { user: 'mailer' });
      assert.deepEqual(second.rcpts.map((r) => r.code), [451, 451, 451]);
      const samples = await metric(relay, 'hygiene_relay_abuse_limited_total');
      // Three recipients answered 451, each counted once, under the limit its reply names (the
      // user's: an authenticated user's envelope senders are counted as the user).
      assert.deepEqual(
        samples.map((s) => [s.labels.kind, s.labels.window, s.labels.unit, s.value]),
        [['user', 'minute', 'messages', 3]],
      );
    } finally {
      await relay.stop();
    }
  });
});
