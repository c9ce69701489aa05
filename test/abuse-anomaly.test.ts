// Issue 17 part 2: a sender whose last hour jumps far above its own baseline is flagged, and
// held under abuse.hold. The rule (src/abuse/anomaly.ts), the two stores of the history it
// reads (src/abuse/store.ts), and the acceptance through a real relay: 20 → 2,000 recipients
// an hour is flagged, 20 → 40 is not.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { register } from 'prom-client';
import { anomaly, median, overFloor, type AnomalyRule } from '../src/abuse/anomaly.ts';
import { BASELINE_HOURS, BUCKET_MS, FileAbuseStore, RedisAbuseStore, type AbuseStore, type Baseline } from '../src/abuse/store.ts';
import { hashPassword } from '../src/inbound/index.ts';
import { createLogger } from '../src/observability/index.ts';
import { connectShared, type SharedStore } from '../src/redis/index.ts';
import { RawClient, type ClientReply } from './harness/client.ts';
import { RedisServer } from './harness/redis.ts';
import { LogCapture, message, World, type Internet } from './harness/world.ts';

const MINUTE = 60_000;
const HOUR = 3_600_000;
/** The defaults of abuse.anomaly. */
const RULE: AnomalyRule = { factor: 10, minRecipients: 200, minDomains: 50 };
const hourly = (hours: number, recipients: number, domains = 1): Baseline => ({ recipients: Array(hours).fill(recipients), domains: Array(hours).fill(domains) });

describe('the anomaly rule', () => {
  it('median: the middle value, the mean of the two middle ones for an even count, 0 for none; the input is left as it was', () => {
    assert.equal(median([]), 0);
    assert.equal(median([7]), 7);
    assert.equal(median([30, 10, 20]), 20);
    assert.equal(median([40, 10, 30, 20]), 25);
    // Numerically, not as strings (a default sort would put 100 before 20).
    assert.equal(median([100, 20, 3]), 20);
    const values = [3, 1, 2];
    median(values);
    assert.deepEqual(values, [3, 1, 2]);
  });

  it('20 → 2,000 recipients an hour is flagged, naming the counts; 20 → 40 is not', () => {
    const baseline = hourly(24, 20, 3);
    assert.equal(
      anomaly({ recipients: 2000, domains: 3 }, baseline, RULE),
      '2000 recipients in the last hour, against a median of 20 an hour (over 10 times that and over 200)',
    );
    assert.equal(anomaly({ recipients: 40, domains: 3 }, baseline, RULE), undefined);
    // The guard checks as soon as the floor is passed: the 201st recipient of the hour already is one.
    assert.match(anomaly({ recipients: 201, domains: 3 }, baseline, RULE)!, /^201 recipients/);
  });

  it('a sender with no history is judged by the floor alone', () => {
    const none: Baseline = { recipients: [], domains: [] };
    assert.equal(anomaly({ recipients: 200, domains: 50 }, none, RULE), undefined);
    assert.equal(anomaly({ recipients: 201, domains: 1 }, none, RULE), '201 recipients in the last hour, against a median of 0 an hour (over 10 times that and over 200)');
    assert.equal(anomaly({ recipients: 51, domains: 51 }, none, RULE), '51 recipient domains in the last hour, against a median of 0 an hour (over 10 times that and over 50)');
  });

  it('distinct recipient domains alone can flag: the same number of recipients spread over far more domains than usual', () => {
    // 150 recipients is under the recipients' floor and their usual 100; 120 domains against a usual 5 is not.
    const baseline = hourly(24, 100, 5);
    assert.equal(anomaly({ recipients: 150, domains: 120 }, baseline, RULE), '120 recipient domains in the last hour, against a median of 5 an hour (over 10 times that and over 50)');
    assert.equal(anomaly({ recipients: 150, domains: 40 }, baseline, RULE), undefined, 'under the domains floor');
    // Both at once: both reasons, recipients first.
    assert.equal(
      anomaly({ recipients: 1500, domains: 120 }, baseline, RULE),
      '1500 recipients in the last hour, against a median of 100 an hour (over 10 times that and over 200); 120 recipient domains in the last hour, against a median of 5 an hour (over 10 times that and over 50)',
    );
  });

  it('the median, not the mean: one big hour in the week does not make a surge normal', () => {
    // One newsletter of 5,000 among hours of 20: the mean would be over 200, the median is 20.
    const baseline: Baseline = { recipients: [...Array(23).fill(20), 5000], domains: Array(24).fill(2) };
    assert.match(anomaly({ recipients: 2000, domains: 2 }, baseline, RULE)!, /against a median of 20 an hour/);
    // A sender whose usual hour is 300 may send 2,000 (under 10 × 300).
    assert.equal(anomaly({ recipients: 2000, domains: 2 }, hourly(24, 300), RULE), undefined);
    // At exactly factor × median it is not over it.
    assert.equal(anomaly({ recipients: 3000, domains: 2 }, hourly(24, 300), RULE), undefined);
    assert.match(anomaly({ recipients: 3001, domains: 2 }, hourly(24, 300), RULE)!, /^3001 recipients/);
  });

  it('overFloor: only a last hour over a floor is worth reading the baseline for', () => {
    assert.equal(overFloor({ recipients: 200, domains: 50 }, RULE), false);
    assert.equal(overFloor({ recipients: 201, domains: 1 }, RULE), true);
    assert.equal(overFloor({ recipients: 1, domains: 51 }, RULE), true);
  });

  describe('properties an admin relies on', () => {
    const rule = fc.record({
      factor: fc.oneof(fc.integer({ min: 1, max: 50 }), fc.double({ min: 1, max: 50, noNaN: true })),
      minRecipients: fc.integer({ min: 1, max: 5000 }),
      minDomains: fc.integer({ min: 1, max: 500 }),
    });
    const count = fc.integer({ min: 0, max: 100_000 });
    const hours = fc.array(fc.record({ recipients: fc.integer({ min: 1, max: 20_000 }), domains: fc.integer({ min: 1, max: 2_000 }) }), { maxLength: BASELINE_HOURS });
    const baselineOf = (entries: readonly { recipients: number; domains: number }[]): Baseline => ({ recipients: entries.map((e) => e.recipients), domains: entries.map((e) => e.domains) });

    it('never flagged at or under both floors, whatever the history; overFloor agrees, so the guard may skip the baseline', () => {
      // Exactly at the floor often (-1), and often with no history, which leaves the floor alone to decide.
      const upTo = fc.oneof(fc.constant(-1), fc.nat());
      fc.assert(
        fc.property(rule, fc.oneof(fc.constant([]), hours), upTo, upTo, (rule, entries, r, d) => {
          const lastHour = { recipients: r < 0 ? rule.minRecipients : r % (rule.minRecipients + 1), domains: d < 0 ? rule.minDomains : d % (rule.minDomains + 1) };
          assert.equal(overFloor(lastHour, rule), false);
          assert.equal(anomaly(lastHour, baselineOf(entries), rule), undefined);
        }),
      );
    });

    // Of factor × the median; exactly 1 (the boundary itself) often.
    const fraction = fc.oneof(fc.constant(1), fc.double({ min: 0, max: 1, noNaN: true }));
    it('never flagged at or under factor × its median, on both counts, however much it sends', () => {
      fc.assert(
        fc.property(rule, hours, fraction, fraction, (rule, entries, fr, fd) => {
          const baseline = baselineOf(entries);
          const lastHour = { recipients: Math.floor(fr * rule.factor * median(baseline.recipients)), domains: Math.floor(fd * rule.factor * median(baseline.domains)) };
          assert.equal(anomaly(lastHour, baseline, rule), undefined);
        }),
      );
    });

    it('flagged exactly when a count is over both its floor and factor × its median; the reason names that count', () => {
      fc.assert(
        fc.property(rule, hours, count, count, (rule, entries, recipients, domains) => {
          const baseline = baselineOf(entries);
          const why = anomaly({ recipients, domains }, baseline, rule);
          const overRecipients = recipients > rule.minRecipients && recipients > rule.factor * median(baseline.recipients);
          const overDomains = domains > rule.minDomains && domains > rule.factor * median(baseline.domains);
          assert.equal(why !== undefined, overRecipients || overDomains);
          if (overRecipients) assert.ok(why!.startsWith(`${recipients} recipients in the last hour`), why);
          if (overDomains) assert.ok(why!.includes(`${domains} recipient domains in the last hour`), why);
          // It becomes the hold's reason, quoted in every 550 of the hold: an SMTP reply is printable ASCII.
          if (why !== undefined) assert.match(why, /^[\x20-\x7e]+$/);
        }),
      );
    });

    it('monotonic: a sender flagged for its last hour is flagged for any last hour with as many or more', () => {
      fc.assert(
        fc.property(rule, hours, count, count, fc.nat({ max: 50_000 }), fc.nat({ max: 5_000 }), (rule, entries, recipients, domains, more, moreDomains) => {
          const baseline = baselineOf(entries);
          if (anomaly({ recipients, domains }, baseline, rule) === undefined) return;
          assert.notEqual(anomaly({ recipients: recipients + more, domains: domains + moreDomains }, baseline, rule), undefined);
        }),
      );
    });

    it('the order of the baseline hours does not matter', () => {
      fc.assert(
        fc.property(rule, hours, count, count, fc.nat(), (rule, entries, recipients, domains, seed) => {
          const shuffled = entries.map((e, i) => ({ e, k: (i * 2654435761 + seed) % 4294967296 })).sort((a, b) => a.k - b.k).map(({ e }) => e);
          assert.equal(anomaly({ recipients, domains }, baselineOf(shuffled), rule), anomaly({ recipients, domains }, baselineOf(entries), rule));
        }),
      );
    });
  });
});

/**
 * What each store must answer for the same history, with explicit times: T0 is the start of
 * an hour (so of a ten-minute bucket), and every principal is a case's own.
 */
const T0 = Date.UTC(2026, 10, 30, 8);
const at = (hours: number, minutes = 0, ms = 0) => T0 + hours * HOUR + minutes * MINUTE + ms;
const sorted = (baseline: Baseline): Baseline => ({ recipients: [...baseline.recipients].sort((a, b) => a - b), domains: [...baseline.domains].sort((a, b) => a - b) });

/** Sends `recipients` recipients for `principal` at `now`, the i-th to domain i % `domains`; resolves to the last answer. */
async function send(store: AbuseStore, principal: string, now: number, recipients: number, domains = 1) {
  let last;
  for (let i = 0; i < recipients; i++) last = await store.sent(principal, `d${i % domains}.test`, now);
  return last!;
}

const storeCases: [string, (store: AbuseStore) => Promise<void>][] = [
  [
    'sent(): the last hour is the last six ten-minute buckets, recipients and distinct domains, sliding a bucket at a time',
    async (store) => {
      const p = 'user:slide';
      assert.deepEqual(await store.sent(p, 'one.test', at(0)), { recipients: 1, domains: 1 });
      assert.deepEqual(await store.sent(p, 'two.test', at(0, 1)), { recipients: 2, domains: 2 });
      // The same domain again: one more recipient, no more domains.
      assert.deepEqual(await store.sent(p, 'one.test', at(0, 9, 59_999)), { recipients: 3, domains: 2 });
      assert.deepEqual(await store.sent(p, 'three.test', at(0, 10)), { recipients: 4, domains: 3 });
      assert.deepEqual(await store.sent(p, 'one.test', at(0, 59, 59_999)), { recipients: 5, domains: 3 });
      // An hour after T0 its first bucket has gone (three recipients, two.test with them).
      assert.deepEqual(await store.sent(p, 'four.test', at(1)), { recipients: 3, domains: 3 });
      // Ten minutes later the 08:10 bucket (three.test) has gone as well.
      assert.deepEqual(await store.sent(p, 'four.test', at(1, 10)), { recipients: 3, domains: 2 });
      // After an hour of nothing, only the new recipient.
      assert.deepEqual(await store.sent(p, 'five.test', at(2, 10)), { recipients: 1, domains: 1 });
      // Another sender's history is its own.
      assert.deepEqual(await store.sent('sender:other@example.test', 'one.test', at(2, 10)), { recipients: 1, domains: 1 });
    },
  ],
  [
    'sent(): a relay whose clock is behind another\'s does not count the other\'s later buckets in its last hour',
    async (store) => {
      const p = 'user:clocks';
      await send(store, p, at(3), 5);
      assert.deepEqual(await store.sent(p, 'x.test', at(1, 30)), { recipients: 1, domains: 1 });
    },
  ],
  [
    'baseline(): per-hour totals of the hours it sent anything in, before the last hour',
    async (store) => {
      const p = 'user:base';
      assert.deepEqual(await store.baseline(p, at(0)), { recipients: [], domains: [] });
      // 08:00-09:00: 3 recipients in its first and last buckets, 2 domains; nothing 09:00-10:00;
      // 10:00-11:00: 5 at 5 domains; 11:00-12:00: 1.
      await send(store, p, at(0), 2, 2);
      await send(store, p, at(0, 59), 1);
      await send(store, p, at(2, 20), 5, 5);
      await send(store, p, at(3, 30), 1);
      // At 12:59 the last hour is 12:00-13:00; every hour before it counts, the empty one not at all.
      assert.deepEqual(sorted(await store.baseline(p, at(4, 59))), { recipients: [1, 3, 5], domains: [1, 2, 5] });
      // At 12:00 the last hour is 11:10-12:00: the 11:00 hour is partly in it, so not in the baseline.
      assert.deepEqual(sorted(await store.baseline(p, at(4))), { recipients: [3, 5], domains: [2, 5] });
      // At 11:59 the 11:00 hour is the last hour itself.
      assert.deepEqual(sorted(await store.baseline(p, at(3, 59))), { recipients: [3, 5], domains: [2, 5] });
      // What it sends in the last hour does not change its baseline.
      await send(store, p, at(4, 50), 40, 10);
      assert.deepEqual(sorted(await store.baseline(p, at(4, 59))), { recipients: [1, 3, 5], domains: [1, 2, 5] });
      // Another sender's is its own.
      assert.deepEqual(await store.baseline('user:base2', at(4, 59)), { recipients: [], domains: [] });
    },
  ],
  [
    'baseline(): up to seven days back, no further',
    async (store) => {
      const p = 'user:week';
      await send(store, p, at(0, 30), 7, 3);
      await send(store, p, at(100), 9, 2);
      // The last hour is the 168th after T0's: T0's hour is the first of the week before it.
      assert.deepEqual(sorted(await store.baseline(p, at(BASELINE_HOURS, 59))), { recipients: [7, 9], domains: [2, 3] });
      assert.deepEqual(sorted(await store.baseline(p, at(BASELINE_HOURS + 1, 59))), { recipients: [9], domains: [2] });
    },
  ],
  [
    'refusedAsSpam(): the distinct providers that refused it within the last hour',
    async (store) => {
      const p = 'user:spam';
      assert.deepEqual(await store.refusedAsSpam(p, 'gmail', at(0)), ['gmail']);
      assert.deepEqual(await store.refusedAsSpam(p, 'outlook', at(0, 10)), ['gmail', 'outlook']);
      // The same provider again is not another provider.
      assert.deepEqual(await store.refusedAsSpam(p, 'gmail', at(0, 20)), ['gmail', 'outlook']);
      // 09:10: outlook's refusal is exactly an hour old, gone; gmail's latest (08:20) stays.
      assert.deepEqual(await store.refusedAsSpam(p, 'yahoo', at(1, 10)), ['gmail', 'yahoo']);
      // 09:20 and a millisecond: gmail's is over an hour old too.
      assert.deepEqual(await store.refusedAsSpam(p, 'yahoo', at(1, 20, 1)), ['yahoo']);
      assert.deepEqual(await store.refusedAsSpam('user:spam2', 'gmail', at(1, 20, 1)), ['gmail']);
    },
  ],
];

describe('the abuse stores answer alike for the same history', () => {
  let dir: string;
  let redis: RedisServer;
  let shared: SharedStore;
  // The Redis store carries on in memory when a command fails, answering alike: a failure must not pass unseen.
  const redisLog = new LogCapture();
  const redisFailures = () => redisLog.records.filter((r) => String(r.msg).includes('Redis unavailable'));
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'abuse-store-'));
    redis = await RedisServer.start();
    shared = connectShared(redis.url, { timeout: 1000, what: 'abuse test', logger: createLogger('warn', redisLog) });
    await shared.ready;
  });
  after(async () => {
    shared?.close();
    await redis?.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  let n = 0;
  const stores: [string, () => Promise<AbuseStore>][] = [
    ['FileAbuseStore (a file)', async () => new FileAbuseStore(path.join(dir, `state-${n++}.sqlite`))],
    ['FileAbuseStore (:memory:)', async () => new FileAbuseStore(':memory:')],
    [
      'RedisAbuseStore',
      async () => {
        await shared.client.flushdb();
        const store = new RedisAbuseStore(shared);
        await store.ready;
        return store;
      },
    ],
  ];
  for (const [storeName, open] of stores) {
    describe(storeName, () => {
      for (const [caseName, check] of storeCases) {
        it(caseName, async () => {
          const store = await open();
          try {
            await check(store);
            if (store instanceof RedisAbuseStore) assert.deepEqual(redisFailures(), [], 'every answer came from Redis');
          } finally {
            store.close();
          }
        });
      }
    });
  }

  it('RedisAbuseStore keeps the history in Redis, each key expiring once the baseline no longer reads it', async () => {
    await shared.client.flushdb();
    const store = new RedisAbuseStore(shared);
    try {
      await store.sent('user:where', 'one.test', at(0));
      const key = `${RedisAbuseStore.prefix}{user:where}:n:${Math.floor(at(0) / BUCKET_MS)}`;
      assert.equal(await shared.client.get(key), '1');
      const ttl = await shared.client.ttl(key);
      assert.ok(ttl > BASELINE_HOURS * 3600 && ttl <= (BASELINE_HOURS + 2) * 3600, `TTL ${ttl} s`);
      assert.deepEqual(redisFailures(), []);
    } finally {
      store.close();
    }
  });

  it('a FileAbuseStore forgets history older than the week it reads: the state file does not grow without end', async () => {
    const file = path.join(dir, 'pruned.sqlite');
    const store = new FileAbuseStore(file);
    const { DatabaseSync } = process.getBuiltinModule('node:sqlite');
    const db = new DatabaseSync(file);
    const rows = () => ['abuse_sent_v1', 'abuse_domains_v1'].map((table) => Number((db.prepare(`SELECT count(*) AS n FROM ${table} WHERE principal = 'user:old'`).get() as { n: number }).n));
    try {
      await send(store, 'user:old', at(0), 3, 3);
      assert.deepEqual(rows(), [1, 3]);
      // Another sender's recipient a week and three hours later prunes it.
      await store.sent('user:new', 'one.test', at(BASELINE_HOURS + 3));
      assert.deepEqual(rows(), [0, 0]);
    } finally {
      db.close();
      store.close();
    }
  });

  it('a FileAbuseStore file keeps the history for the next process to open it', async () => {
    const file = path.join(dir, 'reopened.sqlite');
    const first = new FileAbuseStore(file);
    await send(first, 'user:kept', at(0), 20, 4);
    first.close();
    const second = new FileAbuseStore(file);
    try {
      assert.deepEqual(await second.baseline('user:kept', at(2)), { recipients: [20], domains: [4] });
    } finally {
      second.close();
    }
  });
});

const plain = (user: string, password: string) => `AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`;

/**
 * `messages` messages of `perMessage` recipients at gmail.test each, as the AUTH user `user`
 * on one connection: DATA when any recipient was accepted (its final reply must be 250),
 * RSET otherwise. Resolves to every RCPT reply, in order.
 */
async function sendAs(port: number, user: string, password: string, messages: number, perMessage: number): Promise<ClientReply[]> {
  const { client } = await RawClient.connect(port);
  try {
    await client.command('EHLO corp-ex01.example.test');
    assert.equal((await client.command(plain(user, password))).code, 235);
    const replies: ClientReply[] = [];
    for (let m = 0; m < messages; m++) {
      assert.equal((await client.command(`MAIL FROM:<${user}@example.test>`)).code, 250);
      let accepted = 0;
      for (let i = 0; i < perMessage; i++) {
        const reply = await client.command(`RCPT TO:<${user}-${m}-${i}@gmail.test>`);
        replies.push(reply);
        if (reply.code === 250) accepted++;
      }
      if (accepted) assert.equal((await client.data(message({ from: `${user}@example.test`, to: `${user}-${m}-0@gmail.test` }))).final?.code, 250);
      else assert.equal((await client.command('RSET')).code, 250);
    }
    return replies;
  } finally {
    await client.quit();
  }
}

/** 20 recipients (at 4 domains) in each of the 24 hours before the hour before now: the synthetic baseline. */
async function seedHistory(store: AbuseStore, principal: string): Promise<void> {
  const now = Date.now();
  for (let hoursBack = 2; hoursBack <= 25; hoursBack++) await send(store, principal, now - hoursBack * HOUR, 20, 4);
}

async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const values = (await register.getSingleMetric(name)?.get())?.values ?? [];
  return values.filter((v) => Object.entries(labels).every(([k, value]) => v.labels[k] === value)).reduce((sum, v) => sum + v.value, 0);
}

/** No sending limit in the way: the anomaly rule is what is tested. */
const unlimited = { perMinute: false, perHour: false, perDay: false, messages: { perMinute: false, perHour: false, perDay: false } };
const FLAGGED = '201 recipients in the last hour, against a median of 20 an hour (over 10 times that and over 200)';

describe('the anomaly rule through a relay: 20 → 2,000 recipients an hour is flagged, 20 → 40 is not', () => {
  let password: string;
  let redis: RedisServer;
  before(async () => {
    [password, redis] = await Promise.all([hashPassword('correct horse'), RedisServer.start()]);
  });
  after(async () => {
    await redis?.kill();
  });

  const backends: [string, { redis: boolean }][] = [
    ['the SQLite state file (memo.path)', { redis: false }],
    ['Redis (limits.redis)', { redis: true }],
  ];
  for (const [backend, { redis: useRedis }] of backends) {
    for (const hold of [false, true]) {
      it(`${backend}, abuse.hold ${hold ? 'on: the surging user is held, every later recipient refused 550 5.7.1' : 'off: flagged once, naming the counts, and its mail still goes'}; the steady user is untouched`, async () => {
        const world = await World.start({
          config: {
            listeners: [{ host: '127.0.0.1', port: 0, allowInsecureAuth: true }],
            clients: { networks: ['127.0.0.1/32'], users: [{ name: 'surge', password }, { name: 'steady', password }] },
            limits: { maxRecipients: 100, ...(useRedis && { redis: redis.url }) },
            abuse: { limits: unlimited, addressLimits: unlimited, hold, anomaly: { factor: 10, minRecipients: 200, minDomains: 50 } },
          },
          // The history is in the store before the relay opens it, as a day of real mail would be:
          // without limits.redis, the state file at the relay's memo.path.
          prepare: async (internet: Internet) => {
            let store: AbuseStore;
            let shared: SharedStore | undefined;
            if (useRedis) {
              shared = connectShared(redis.url, { timeout: 1000, what: 'seed', logger: createLogger('silent') });
              await shared.ready;
              await shared.client.flushdb();
              store = new RedisAbuseStore(shared);
            } else {
              store = new FileAbuseStore((internet.relayConfig().memo as { path: string }).path);
            }
            try {
              await seedHistory(store, 'user:surge');
              await seedHistory(store, 'user:steady');
            } finally {
              store.close();
              shared?.close();
            }
          },
        });
        try {
          const [flaggedBefore, heldBefore] = [await metric('hygiene_relay_abuse_flagged_total', { reason: 'anomaly' }), await metric('hygiene_relay_abuse_held_recipients_total')];
          const steady = await sendAs(world.port, 'steady', 'correct horse', 2, 20);
          const surge = await sendAs(world.port, 'surge', 'correct horse', 20, 100);

          assert.deepEqual(steady.map((r) => r.code), Array(40).fill(250));
          const records = world.logs.records.filter((r) => r.msg === 'abuse');
          assert.equal(records.length, 1, JSON.stringify(records));
          assert.equal(records[0].reason, 'anomaly');
          assert.equal(records[0].user, 'surge');
          assert.equal(records[0].flagged, FLAGGED);
          assert.equal(await metric('hygiene_relay_abuse_flagged_total', { reason: 'anomaly' }), flaggedBefore + 1);
          const gmail = world.destination('gmail.test');
          // With limits.redis, the relay read the seeded history from Redis, never its in-process fallback.
          assert.deepEqual(world.logs.records.filter((r) => String(r.msg).includes('Redis unavailable')), []);

          if (!hold) {
            assert.equal(records[0].action, 'flagged only (abuse.hold is off): its mail still goes');
            assert.deepEqual(surge.map((r) => r.code), Array(2000).fill(250));
            const received = await gmail.waitForMessages(22);
            assert.equal(received.flatMap((m) => m.envelope.rcptTo).length, 2040);
            assert.deepEqual(await world.relay.abuse.holds(), []);
            assert.equal(await metric('hygiene_relay_abuse_held_recipients_total'), heldBefore);
          } else {
            assert.equal(records[0].action, 'held: every recipient is refused 550 5.7.1 until `hygiene-relay abuse release surge`');
            // The first 200 went; the 201st made it anomalous and was refused with every one after it.
            assert.deepEqual(surge.slice(0, 200).map((r) => r.code), Array(200).fill(250));
            const refused = surge.slice(200);
            assert.equal(refused.length, 1800);
            for (const reply of refused) {
              assert.equal(reply.code, 550);
              assert.match(reply.text, /^5\.7\.1 user surge is held by the relay's abuse guard since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \((.+)\); ask the mail administrator to release it$/);
              assert.ok(reply.text.includes(`(${FLAGGED})`), reply.text);
              assert.match(reply.text, /^[\x20-\x7e]+$/, 'the reply is printable ASCII, nothing spelled out as \\x..');
            }
            const received = await gmail.waitForMessages(4);
            assert.equal(received.length, 4, 'two messages of each user, none of the surge after the hold');
            assert.equal(received.flatMap((m) => m.envelope.rcptTo).length, 240);
            const holds = await world.relay.abuse.holds();
            assert.deepEqual(holds.map(({ kind, who, why }) => ({ kind, who, why })), [{ kind: 'user', who: 'surge', why: FLAGGED }]);
            assert.equal(await metric('hygiene_relay_abuse_held_recipients_total'), heldBefore + 1800);
            // The steady user still sends.
            assert.deepEqual((await sendAs(world.port, 'steady', 'correct horse', 1, 5)).map((r) => r.code), Array(5).fill(250));
          }
        } finally {
          await world.close();
        }
      });
    }
  }
});
