// The abuse guard after its review (issue 17), as an admin would notice it: an authenticated
// user's envelope senders count as the user (its override holds, its release frees it whole);
// an episode, a record and a hold per key over, so an internal server over its address limit
// no longer hides a sender's own hold; holds survive a Redis outage and holds placed during it
// reach Redis once it is back; an IDN envelope sender is counted, held and listed in ASCII.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { controlRequest } from '../src/control/index.ts';
import { hashPassword } from '../src/inbound/index.ts';
import { assertHeld, cli, delivered, limitedReply, list, overOf, PASSWORD, release, sendMail, type OverRecord } from './harness/abuse.ts';
import { RelayProcess } from './harness/process.ts';
import { RedisServer } from './harness/redis.ts';
import { freePort, Internet } from './harness/world.ts';

describe('abuse guard: who is counted, and an episode per key over', { timeout: 120_000 }, () => {
  let dir: string;
  let internet: Internet;
  let password: string;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-abuse-edges-'));
    [internet, password] = await Promise.all([Internet.start(), hashPassword(PASSWORD)]);
    // The IDN sender's domain authorizes the egress, as example.test does: its mail is delivered.
    internet.dns.add('xn--bcher-kva.test', { type: 'TXT', data: `v=spf1 ${internet.egress.map((e) => `ip4:${e.ip}`).join(' ')} -all` });
  });
  after(async () => {
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const gmail = () => internet.destination('gmail.test');
  const fileOf = (name: string) => path.join(dir, `${name}.yaml`);
  /** A relay of its own (control socket, state file): users newsletter and mailer, `abuse` as given. */
  const start = (name: string, overrides: Record<string, unknown>) =>
    RelayProcess.start(
      fileOf(name),
      internet.relayConfig({
        listeners: [{ host: '127.0.0.1', port: 0, allowInsecureAuth: true }],
        clients: { networks: ['127.0.0.1/32'], users: [{ name: 'newsletter', password }, { name: 'mailer', password }] },
        control: { socket: path.join(dir, `${name}.sock`) },
        memo: { path: path.join(dir, `${name}.sqlite`) },
        ...overrides,
      }),
    );

  it("the README's newsletter override: 200 recipients within a minute as <newsletter@example.test>, all accepted and delivered (the default 150 a minute is not applied to its envelope sender)", async () => {
    gmail().received.length = 0;
    const relay = await start('newsletter', {
      abuse: { overrides: [{ user: 'newsletter', perMinute: 100_000, perHour: 100_000, perDay: 100_000, messages: { perMinute: false, perHour: false, perDay: false } }] },
    });
    try {
      // limits.maxRecipients is 100: two messages of 100.
      for (const batch of [0, 1]) {
        const to = Array.from({ length: 100 }, (_, i) => `reader${batch * 100 + i}@gmail.test`);
        const sent = await sendMail(relay.port, 'newsletter@example.test', to, { user: 'newsletter' });
        const refused = sent.rcpts.flatMap((r, i) => (r.code === 250 ? [] : [`${to[i]}: ${r.code} ${r.text}`]));
        assert.deepEqual(refused, [], `message ${batch + 1}`);
        assert.equal(sent.data?.code, 250, JSON.stringify(sent.data));
      }
      assert.deepEqual(gmail().received.map((m) => m.envelope.rcptTo.length), [100, 100]);
      assert.equal(relay.records.filter((r) => r.msg === 'abuse').length, 0, 'no abuse episode');
      assert.equal(await list(fileOf('newsletter')), 'no sender is held\n');
    } finally {
      await relay.stop();
    }
  });

  it('abuse.limits applying to users: a held user released with `abuse release mailer` sends its very next recipient (its envelope sender is not still over, nor held)', async () => {
    gmail().received.length = 0;
    const relay = await start('release-whole', { abuse: { hold: true, limits: { perHour: 5 } } });
    const file = fileOf('release-whole');
    const why = 'over its limit of 5 recipients per hour';
    try {
      for (let i = 0; i < 5; i++) await delivered(relay.port, 'mailer@example.test', `victim${i}@gmail.test`, 'mailer');
      const since = assertHeld(await sendMail(relay.port, 'mailer@example.test', ['victim5@gmail.test'], { user: 'mailer' }), 'user mailer', why);
      assert.equal(await list(file), `user mailer\theld since ${since}: ${why}\n`, 'the user alone is held');

      assert.equal(await release(file, 'mailer'), `released user mailer (held since ${since}: ${why})\n`);
      await relay.waitFor((r) => r.msg === 'abuse released');
      // The very next RCPT, same envelope sender: accepted, delivered.
      await delivered(relay.port, 'mailer@example.test', 'after-release@gmail.test', 'mailer');
      assert.deepEqual(gmail().received.at(-1)?.envelope.rcptTo, ['after-release@gmail.test']);
      assert.equal(gmail().received.length, 6);
      assert.equal(await list(file), 'no sender is held\n');
      const records = relay.records.filter((r) => r.msg === 'abuse');
      assert.equal(records.length, 1, `no second episode after the release: ${JSON.stringify(records)}`);
      assert.deepEqual(overOf(records[0]), [['user', 'mailer', 'recipients', 'hour', 5, 6]], 'the user is over, not its envelope sender apart');
    } finally {
      await relay.stop();
    }
  });

  it('an internal server over its address limit: a sender then over its own limit is held and recorded; the address is never held, its other senders get 451 naming it', async () => {
    gmail().received.length = 0;
    // No AUTH: the trusted network alone. 3 recipients an hour for the address, 2 per envelope sender.
    const relay = await start('address-over', { clients: { networks: ['127.0.0.1/32'] }, abuse: { hold: true, addressLimits: { perHour: 3 }, limits: { perHour: 2 } } });
    const file = fileOf('address-over');
    const addressLimited = limitedReply('client 127.0.0.1', '3 recipients per hour');
    const why = 'over its limit of 2 recipients per hour';
    try {
      // Three recipients from two senders: the address at its limit.
      const alice = await sendMail(relay.port, 'alice@example.test', ['a1@gmail.test', 'a2@gmail.test']);
      assert.deepEqual([...alice.rcpts.map((r) => r.code), alice.data?.code], [250, 250, 250]);
      await delivered(relay.port, 'carol@example.test', 'c1@gmail.test');

      // bob: the address is over (451 naming it), then bob is over its own 2 as well: held.
      const bob = await sendMail(relay.port, 'bob@example.test', ['b1@gmail.test', 'b2@gmail.test', 'b3@gmail.test', 'b4@gmail.test']);
      assert.equal(bob.data, undefined);
      assert.match(bob.rcpts[0].text, addressLimited);
      assert.match(bob.rcpts[1].text, addressLimited);
      assert.deepEqual(bob.rcpts.map((r) => r.code), [451, 451, 550, 550], JSON.stringify(bob.rcpts));
      const since = assertHeld({ mail: bob.mail, rcpts: bob.rcpts.slice(2) }, 'sender <bob@example.test>', why);
      assert.equal(assertHeld(await sendMail(relay.port, 'bob@example.test', ['b5@gmail.test']), 'sender <bob@example.test>', why), since);

      // Another sender of the same server: the address is over, not held.
      const dave = await sendMail(relay.port, 'dave@example.test', ['d1@gmail.test']);
      assert.equal(dave.rcpts[0].code, 451, JSON.stringify(dave.rcpts));
      assert.match(dave.rcpts[0].text, addressLimited);

      assert.equal(await list(file), `sender bob@example.test\theld since ${since}: ${why}\n`, 'bob alone is held, not 127.0.0.1');
      const records = relay.records.filter((r) => r.msg === 'abuse');
      const addressRecord = records.find((r) => (r.over as OverRecord[]).some((o) => o.counted === 'address'));
      const bobRecord = records.find((r) => (r.over as OverRecord[]).some((o) => o.counted === 'sender'));
      assert.ok(addressRecord, JSON.stringify(records));
      assert.ok(bobRecord, `a record for bob's own episode: ${JSON.stringify(records)}`);
      assert.deepEqual(overOf(addressRecord), [['address', '127.0.0.1', 'recipients', 'hour', 3, 4]]);
      assert.match(String(addressRecord.action), /^every further recipient is answered 451 4\.7\.1/);
      assert.deepEqual([bobRecord.reason, bobRecord.client, bobRecord.sender], ['limit', '127.0.0.1', 'bob@example.test']);
      assert.deepEqual(overOf(bobRecord), [['sender', 'bob@example.test', 'recipients', 'hour', 2, 3]]);
      assert.match(String(bobRecord.action), /^held: .*`hygiene-relay abuse release bob@example\.test`$/);
      assert.equal(records.length, 2, JSON.stringify(records));
      assert.equal(gmail().received.length, 2, 'nothing after the address went over');
    } finally {
      await relay.stop();
    }
  });

  it('an IDN envelope sender: alice@bücher.test is counted with alice@xn--bcher-kva.test, under the domain override for xn--bcher-kva.test, and held and listed in ASCII', async () => {
    gmail().received.length = 0;
    const relay = await start('idn', {
      clients: { networks: ['127.0.0.1/32'] },
      abuse: { hold: true, limits: { perHour: 2 }, overrides: [{ domain: 'xn--bcher-kva.test', perHour: 4 }] },
    });
    const file = fileOf('idn');
    const ascii = 'alice@xn--bcher-kva.test';
    const why = 'over its limit of 4 recipients per hour';
    try {
      // Four recipients, beyond the default 2: the override for the A-label domain applies.
      const unicode = await sendMail(relay.port, 'alice@bücher.test', ['u1@gmail.test', 'u2@gmail.test'], { smtputf8: true });
      assert.deepEqual([...unicode.rcpts.map((r) => r.code), unicode.data?.code], [250, 250, 250], JSON.stringify(unicode));
      const plainAscii = await sendMail(relay.port, ascii, ['u3@gmail.test', 'u4@gmail.test']);
      assert.deepEqual([...plainAscii.rcpts.map((r) => r.code), plainAscii.data?.code], [250, 250, 250], JSON.stringify(plainAscii));
      assert.equal(gmail().received.length, 2);

      // The fifth, in either spelling, is the same sender's: held under the ASCII form.
      const since = assertHeld(await sendMail(relay.port, 'alice@bücher.test', ['u5@gmail.test'], { smtputf8: true }), `sender <${ascii}>`, why);
      assert.equal(assertHeld(await sendMail(relay.port, ascii, ['u6@gmail.test']), `sender <${ascii}>`, why), since);

      assert.equal(await list(file), `sender ${ascii}\theld since ${since}: ${why}\n`);
      const record = await relay.waitFor((r) => r.msg === 'abuse');
      assert.equal(record.sender, ascii);
      assert.deepEqual(overOf(record), [['sender', ascii, 'recipients', 'hour', 4, 5]]);
      assert.match(String(record.action), new RegExp(`\`hygiene-relay abuse release ${escape(ascii)}\`$`));

      assert.equal(await release(file, ascii), `released sender ${ascii} (held since ${since}: ${why})\n`);
      await relay.waitFor((r) => r.msg === 'abuse released');
      const again = await sendMail(relay.port, 'alice@bücher.test', ['u7@gmail.test'], { smtputf8: true });
      assert.deepEqual([again.rcpts[0].code, again.data?.code], [250, 250], JSON.stringify(again));
      assert.equal(gmail().received.length, 3);
    } finally {
      await relay.stop();
    }
  });
});

describe('abuse guard: holds through a Redis outage', { timeout: 120_000 }, () => {
  let dir: string;
  let internet: Internet;
  let redis: RedisServer;
  let password: string;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-abuse-outage-'));
    // Redis that keeps what it acknowledged across a crash: started again on its port, it has its holds.
    [internet, redis, password] = await Promise.all([Internet.start(), freePort().then((port) => RedisServer.persistent(dir, port)), hashPassword(PASSWORD)]);
  });
  after(async () => {
    await Promise.all([internet.close(), redis.kill()]);
    rmSync(dir, { recursive: true, force: true });
  });

  const fileOf = (name: string) => path.join(dir, `${name}.yaml`);
  const socketOf = (name: string) => path.join(dir, `${name}.sock`);
  const start = (name: string) =>
    RelayProcess.start(
      fileOf(name),
      internet.relayConfig({
        listeners: [{ host: '127.0.0.1', port: 0, allowInsecureAuth: true }],
        clients: { networks: ['127.0.0.1/32'], users: [{ name: 'mailer', password }, { name: 'bulk', password }, { name: 'solo', password }, { name: 'late', password }] },
        control: { socket: socketOf(name) },
        memo: { path: path.join(dir, `${name}.sqlite`) },
        limits: { redis: redis.url },
        abuse: { hold: true, limits: { perHour: 2 } },
      }),
    );
  const WHY = 'over its limit of 2 recipients per hour';
  const unavailable = (r: Record<string, unknown>) => r.msg === 'sending limits: Redis unavailable, carrying on without it until it is back';
  const back = (r: Record<string, unknown>) => r.msg === 'sending limits: Redis is back';

  it('held through Redis: still 550 while it is down; list and release answer 1 meanwhile; a hold placed meanwhile reaches Redis once it is back, for the other replica to refuse, list and release', async () => {
    const [a, b] = await Promise.all([start('replica-a'), start('replica-b')]);
    try {
      // mailer held through A, and refused on B (which asked Redis).
      await delivered(a.port, 'mailer@example.test', 'm1@gmail.test', 'mailer');
      await delivered(b.port, 'mailer@example.test', 'm2@gmail.test', 'mailer');
      const mailerSince = assertHeld(await sendMail(a.port, 'mailer@example.test', ['m3@gmail.test'], { user: 'mailer' }), 'user mailer', WHY);
      assert.equal(assertHeld(await sendMail(b.port, 'mailer@example.test', ['m4@gmail.test'], { user: 'mailer' }), 'user mailer', WHY), mailerSince);
      assert.equal(assertHeld(await sendMail(a.port, 'mailer@example.test', ['m4a@gmail.test'], { user: 'mailer' }), 'user mailer', WHY), mailerSince);

      const [seenA, seenB] = [a.records.length, b.records.length];
      await redis.kill();
      await Promise.all([a.waitFor(unavailable, seenA), b.waitFor(unavailable, seenB)]);

      // Redis away: the hold it told of still holds on both replicas.
      assert.equal(assertHeld(await sendMail(a.port, 'mailer@example.test', ['m5@gmail.test'], { user: 'mailer' }), 'user mailer', WHY), mailerSince);
      assert.equal(assertHeld(await sendMail(b.port, 'mailer@example.test', ['m6@gmail.test'], { user: 'mailer' }), 'user mailer', WHY), mailerSince);

      // What an admin asks needs Redis: exit 1, one line saying so, on either replica.
      const stderr = "hygiene-relay: the relay answered: Redis (limits.redis) does not answer, and it holds every replica's holds: try again once it is back\n";
      const asked = [['replica-a', ['list']], ['replica-b', ['list', '--json']], ['replica-a', ['release', 'mailer']], ['replica-b', ['release', 'mailer']]] as const;
      const answers = await Promise.all(asked.map(([name, args]) => cli(...args, '--config', fileOf(name))));
      for (const [i, [name, args]] of asked.entries()) assert.deepEqual(answers[i], { code: 1, stdout: '', stderr }, `${name}: abuse ${args.join(' ')}`);

      // bulk goes over on A meanwhile: held by A alone for now.
      await delivered(a.port, 'bulk@example.test', 'b1@gmail.test', 'bulk');
      await delivered(a.port, 'bulk@example.test', 'b2@gmail.test', 'bulk');
      const bulkSince = assertHeld(await sendMail(a.port, 'bulk@example.test', ['b3@gmail.test'], { user: 'bulk' }), 'user bulk', WHY);

      const [backA, backB] = [a.records.length, b.records.length];
      redis = await RedisServer.persistent(dir, redis.port);
      await Promise.all([a.waitFor(back, backA), b.waitFor(back, backB)]);
      // A writes its hold to Redis as it reconnects: B lists it once it is there.
      let holds = '';
      for (const deadline = Date.now() + 10_000; !holds.includes('"kind":"user","who":"bulk"') && Date.now() < deadline; ) holds = await controlRequest(socketOf('replica-b'), 'abuse list');
      assert.match(holds, /"kind":"user","who":"bulk"/, 'the hold A placed during the outage reached Redis');

      const listed = `user mailer\theld since ${mailerSince}: ${WHY}\nuser bulk\theld since ${bulkSince}: ${WHY}\n`;
      assert.equal(await list(fileOf('replica-b')), listed);
      assert.equal(await list(fileOf('replica-a')), listed, 'once each, though A placed one of them');
      assert.equal(assertHeld(await sendMail(b.port, 'bulk@example.test', ['b4@gmail.test'], { user: 'bulk' }), 'user bulk', WHY), bulkSince);

      // Released through B: free on A at once; mailer still held.
      assert.equal(await release(fileOf('replica-b'), 'bulk'), `released user bulk (held since ${bulkSince}: ${WHY})\n`);
      await delivered(a.port, 'bulk@example.test', 'after-release@gmail.test', 'bulk');
      assert.equal(await list(fileOf('replica-a')), `user mailer\theld since ${mailerSince}: ${WHY}\n`);
      assert.equal(assertHeld(await sendMail(a.port, 'mailer@example.test', ['m7@gmail.test'], { user: 'mailer' }), 'user mailer', WHY), mailerSince);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  // The replica that placed a hold keeps it through an outage.
  let up = true;
  const outage = async (relay: RelayProcess) => {
    const seen = relay.records.length;
    await redis.kill();
    up = false;
    await relay.waitFor(unavailable, seen);
  };
  const restore = async (relay?: RelayProcess) => {
    const seen = relay?.records.length ?? 0;
    redis = await RedisServer.persistent(dir, redis.port);
    up = true;
    await relay?.waitFor(back, seen);
  };

  it('held by this replica through Redis, then Redis away before the user sends here again: still 550', async () => {
    const relay = await start('placer');
    try {
      await delivered(relay.port, 'solo@example.test', 's1@gmail.test', 'solo');
      await delivered(relay.port, 'solo@example.test', 's2@gmail.test', 'solo');
      const since = assertHeld(await sendMail(relay.port, 'solo@example.test', ['s3@gmail.test'], { user: 'solo' }), 'user solo', WHY);
      await outage(relay);
      assert.equal(assertHeld(await sendMail(relay.port, 'solo@example.test', ['s4@gmail.test'], { user: 'solo' }), 'user solo', WHY), since);
    } finally {
      await relay.stop();
      if (!up) await restore();
    }
  });

  it('held during an outage, written to Redis once it is back, then Redis away again before the user sends here again: still 550', async () => {
    const relay = await start('syncer');
    try {
      await outage(relay);
      await delivered(relay.port, 'late@example.test', 'l1@gmail.test', 'late');
      await delivered(relay.port, 'late@example.test', 'l2@gmail.test', 'late');
      const since = assertHeld(await sendMail(relay.port, 'late@example.test', ['l3@gmail.test'], { user: 'late' }), 'user late', WHY);
      await restore(relay);
      let holds = '';
      for (const deadline = Date.now() + 10_000; !holds.includes('"kind":"user","who":"late"') && Date.now() < deadline; ) holds = await controlRequest(socketOf('syncer'), 'abuse list');
      assert.match(holds, /^ok .*"kind":"user","who":"late"/, 'the hold reached Redis');
      await outage(relay);
      assert.equal(assertHeld(await sendMail(relay.port, 'late@example.test', ['l4@gmail.test'], { user: 'late' }), 'user late', WHY), since);
    } finally {
      await relay.stop();
    }
  });
});
