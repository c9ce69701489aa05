import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { register } from 'prom-client';
import { Playbook, Providers, type PlaybookExample } from '../src/delivery/index.ts';
import { hashPassword } from '../src/inbound/index.ts';
import { RawClient, type ClientReply } from './harness/client.ts';
import { RawMx, type RawAnswer } from './harness/raw-mx.ts';
import { message, World } from './harness/world.ts';

/**
 * Issue 17 part 5, the providers' own verdict: the destinations' refusals for good in the
 * playbook's reputation or content category count against the sender, and two providers
 * refusing one sender's mail as spam within an hour flag it. Not a deferral (the client's
 * retry would count it again) and not a public blocklist's listing of the egress IP (a rule
 * with `listing`: the relay's standing, not one sender's mail). Each provider's MX answers
 * under a host name of that provider (the registry knows it by the suffix) with replies
 * copied from the playbook's own examples, byte for byte as the provider sends them (RawMx:
 * multi-line Gmail replies included, which smtp-server cannot send).
 */
const MX = {
  gmail: { domain: 'gmail.test', host: 'gmail-smtp-in.l.google.com', ip: '127.0.0.80' },
  microsoft: { domain: 'outlook.test', host: 'outlook-test.mail.protection.outlook.com', ip: '127.0.0.81' },
  yahoo: { domain: 'yahoo.test', host: 'mta5.am0.yahoodns.net', ip: '127.0.0.83' },
  // Nobody the registry knows: a provider of its own, under its recipient domain.
  isp: { domain: 'isp.test', host: 'mx.isp.test', ip: '127.0.0.82' },
} as const;
type MxName = keyof typeof MX;

const playbook = Playbook.load(Providers.load());

/** The playbook's own example of `rule` at `at`, and what the playbook says of it. */
function reply(rule: string, at: PlaybookExample['at']): PlaybookExample & { rule: string; category: string; permanence: string; listing: boolean } {
  const found = playbook.rules.find((r) => r.id === rule);
  assert.ok(found, `no playbook rule ${rule}`);
  const example = found.examples.find((e) => e.at === at);
  assert.ok(example, `rule ${rule} has no example at ${at}`);
  return { ...example, rule, category: found.category, permanence: found.permanence, listing: found.listing };
}

/** Refused as spam: Gmail at RCPT (reputation) and at the end of DATA (content, reputation); Microsoft's S3140 block list at RCPT; an unknown ISP's generic "poor IP reputation". */
const SPAM = {
  gmailRcpt: reply('gmail-blocked-unsolicited', 'rcpt'),
  gmailData: reply('gmail-unsolicited', 'data'),
  gmailDataReputation: reply('gmail-low-reputation', 'data'),
  microsoftRcpt: reply('microsoft-block-list', 'rcpt'),
  ispRcpt: reply('reputation', 'rcpt'),
};
/** Refused for something else: an unknown Gmail account (550 5.1.1), unauthenticated mail (550 5.7.26). */
const NOT_SPAM = {
  gmailUnknown: reply('gmail-no-such-user', 'rcpt'),
  gmailUnauthenticated: reply('gmail-unauthenticated', 'data'),
};

/** Deferred for its reputation: Gmail's 421 4.7.0 "very low reputation of the sending IP" at the end of DATA, which the client retries. */
const DEFERRED = { gmailReputation: reply('gmail-low-reputation-deferred', 'data') };
/**
 * A public blocklist's listing of the egress IP, the relay's standing rather than one
 * sender's mail: Yahoo's 553 [BL23] "Spamhaus XBL" at MAIL FROM; an unknown MX's 554
 * "blocked using zen.spamhaus.org" at RCPT (the generic blocklist rule).
 */
const LISTED = { yahooSpamhaus: reply('yahoo-spamhaus', 'mail'), ispBlocklist: reply('blocklist', 'rcpt') };

for (const [name, example] of Object.entries({ ...DEFERRED, ...LISTED })) assert.equal(example.category, 'reputation', name);
for (const [name, example] of Object.entries(SPAM)) assert.deepEqual([example.permanence, example.listing], ['permanent', false], name);
assert.deepEqual([DEFERRED.gmailReputation.permanence, DEFERRED.gmailReputation.listing], ['temporary', false]);
for (const [name, example] of Object.entries(LISTED)) assert.deepEqual([example.permanence, example.listing], ['permanent', true], name);
assert.match(DEFERRED.gmailReputation.wire, /^421-4\.7\.0 This message is suspicious due to the very low reputation of the sending IP\r\n421 4\.7\.0 /);
assert.match(LISTED.yahooSpamhaus.wire, /^553 5\.7\.1 \[BL23\] Connections not accepted from IP addresses on Spamhaus XBL/);
assert.match(LISTED.ispBlocklist.wire, /^554 5\.7\.1 .* blocked using zen\.spamhaus\.org/);
for (const [name, example] of Object.entries(SPAM)) assert.ok(['reputation', 'content'].includes(example.category), `${name}: ${example.category}`);
for (const [name, example] of Object.entries(NOT_SPAM)) assert.ok(!['reputation', 'content'].includes(example.category), `${name}: ${example.category}`);
assert.match(SPAM.microsoftRcpt.wire, /\(S3140\)/);
assert.match(NOT_SPAM.gmailUnknown.wire, /^550-5\.1\.1 /);
assert.match(NOT_SPAM.gmailUnauthenticated.wire, /^550-5\.7\.26 /);

const plain = (user: string, password: string) => `AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`;
const PASSWORD = 'correct horse';

async function flaggedCount(): Promise<number> {
  const metric = await register.getSingleMetric('hygiene_relay_abuse_flagged_total')?.get();
  return metric?.values.find((v) => v.labels.reason === 'spam_refusals')?.value ?? 0;
}

async function heldCount(): Promise<number> {
  const metric = await register.getSingleMetric('hygiene_relay_abuse_held_recipients_total')?.get();
  return metric?.values[0]?.value ?? 0;
}

/** `promise`, or a failure naming `what` after 10 s: a record that never comes fails the test instead of hanging it. */
async function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within 10 s`)), 10_000);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The relay in this process with the three providers' MX hosts, each playing what `plays` says. */
class ProviderMxs {
  readonly mxs = new Map<MxName, RawMx>();
  /** What each MX answers now; an MX without a play accepts everything. */
  plays: Partial<Record<MxName, PlaybookExample>> = {};
  world!: World;

  /** `delivery`: more delivery settings (an admin's `playbook` file). */
  async start(config: Record<string, unknown>, delivery: Record<string, unknown> = {}): Promise<void> {
    // Monitor: the providers' own replies are under test, not the relay's prediction of them
    // (Gmail's profile wants TLS, which these raw MX hosts do not offer).
    this.world = await World.start({ destinations: [], verify: false, config: (internet) => ({ defaultPolicy: 'monitor', delivery: internet.deliverySettings({ shaping: false, ...delivery }), ...config }) });
    for (const [name, mx] of Object.entries(MX) as [MxName, (typeof MX)[MxName]][]) {
      this.world.dns.add(mx.domain, { type: 'MX', data: { preference: 10, exchange: mx.host } });
      this.world.dns.add(mx.host, { type: 'A', data: mx.ip });
      this.mxs.set(name, await RawMx.start(mx.ip, this.world.mxPort, (command) => this.#answer(name, command)));
    }
  }

  #answer(name: MxName, command: string): RawAnswer {
    const example = this.plays[name];
    if (!example) return undefined;
    const verb = command.slice(0, 4).toUpperCase();
    if (example.at === 'mail' && verb === 'MAIL') return example.wire;
    if (example.at === 'rcpt' && verb === 'RCPT') return example.wire;
    if (example.at === 'data' && command === '.') return example.wire;
    return undefined;
  }

  async close(): Promise<void> {
    await Promise.all([...this.mxs.values()].map((mx) => mx.close()));
    await this.world?.close();
  }

  /**
   * One transaction from the internal server (as `user` when given), with the MX hosts
   * playing `plays` meanwhile: the RCPT replies, the DATA reply when a recipient was
   * accepted, and this transaction's record once the relay wrote it (unless every recipient was
   * refused by the relay itself before any destination heard of it).
   */
  async send(from: string, to: string[], plays: Partial<Record<MxName, PlaybookExample>> = {}, user?: string): Promise<{ rcpts: ClientReply[]; data?: ClientReply; record?: Record<string, unknown> }> {
    this.plays = plays;
    // This transaction's record, not an earlier one's for the same recipient (a retry).
    const earlier = new Set(this.world.logs.records);
    try {
      const { client } = await RawClient.connect(this.world.port);
      const rcpts: ClientReply[] = [];
      let data: ClientReply | undefined;
      try {
        await client.command('EHLO corp-ex01.example.test');
        if (user) assert.equal((await client.command(plain(user, PASSWORD))).code, 235);
        assert.equal((await client.command(`MAIL FROM:<${from}>`)).code, 250);
        for (const recipient of to) rcpts.push(await client.command(`RCPT TO:<${recipient}>`));
        if (rcpts.some((r) => r.code === 250)) data = (await client.data(message({ from, to: to.join(', ') }))).final;
      } finally {
        await client.quit();
      }
      // The recipients the relay answered itself (held, over a limit) are in no record: a
      // transaction nobody forwarded anything for is not waited for.
      const forwarded = to.filter((_, i) => !/^(451 4\.7\.1|550 5\.7\.1) (user|sender|client) /.test(`${rcpts[i].code} ${rcpts[i].text}`));
      const record = forwarded.length
        ? await within(this.world.logs.waitFor((r) => r.msg === 'transaction' && !earlier.has(r) && (r.envelope as { rcptTo: string[] }).rcptTo.includes(forwarded[0])), `transaction record for ${forwarded[0]}`)
        : undefined;
      return { rcpts, data, record };
    } finally {
      this.plays = {};
    }
  }

  abuse(sender: string): Record<string, unknown>[] {
    return this.world.logs.records.filter((r) => r.msg === 'abuse' && r.sender === sender);
  }

  waitForAbuse(sender: string): Promise<Record<string, unknown>> {
    return within(this.world.logs.waitFor((r) => r.msg === 'abuse' && r.sender === sender), `abuse record for ${sender}`);
  }
}

/** What the transaction record says of each recipient: how the playbook read the destination's reply. */
const explained = (record: Record<string, unknown> | undefined) =>
  (record!.recipients as Record<string, unknown>[]).map((r) => ({ address: r.address, result: r.result, category: r.category, rule: r.rule, provider: r.provider }));

let counter = 0;
/** A recipient address no other transaction of this file uses. */
const rcpt = (mx: MxName, tag: string) => `${tag}-${++counter}@${MX[mx].domain}`;

describe("the providers' own verdict: refused as spam by two providers within an hour (abuse.hold off)", () => {
  const relay = new ProviderMxs();
  before(() => relay.start({}));
  after(() => relay.close());

  it('Gmail, then Microsoft refusing one sender as spam: one abuse record naming both, the metric counts it, and its mail still goes', async () => {
    const sender = 'alice@example.test';
    const flaggedBefore = await flaggedCount();

    const gmail = rcpt('gmail', 'a');
    const first = await relay.send(sender, [gmail], { gmail: SPAM.gmailRcpt });
    assert.equal(first.rcpts[0].code, 550);
    assert.ok(first.rcpts[0].text.startsWith(`5.7.28 ${MX.gmail.host} [${MX.gmail.ip}] said: Our system has detected an unusual rate of unsolicited mail`), first.rcpts[0].text);
    assert.deepEqual(explained(first.record), [{ address: gmail, result: 'refused', category: 'reputation', rule: 'gmail-blocked-unsolicited', provider: 'gmail' }]);

    const outlook = rcpt('microsoft', 'a');
    const second = await relay.send(sender, [outlook], { microsoft: SPAM.microsoftRcpt });
    assert.equal(second.rcpts[0].code, 550);
    assert.match(second.rcpts[0].text, /part of their network is on our block list \(S3140\)/);
    assert.deepEqual(explained(second.record), [{ address: outlook, result: 'refused', category: 'reputation', rule: 'microsoft-block-list', provider: 'microsoft' }]);

    const flag = await relay.waitForAbuse(sender);
    assert.equal(flag.level, 'warn');
    assert.equal(flag.reason, 'spam_refusals');
    assert.equal(flag.flagged, 'refused as spam by gmail, microsoft within an hour');
    assert.equal(flag.action, 'flagged only (abuse.hold is off): its mail still goes');
    assert.equal(flag.client, '127.0.0.1');
    assert.equal(flag.user, undefined);
    assert.equal(await flaggedCount(), flaggedBefore + 1);

    // Refused again within the hour (at the end of DATA this time): the episode has its record already.
    const again = await relay.send(sender, [rcpt('gmail', 'a')], { gmail: SPAM.gmailData });
    assert.equal(again.rcpts[0].code, 250);
    assert.equal(again.data?.code, 550);
    assert.equal(explained(again.record)[0].category, 'content');
    // Not held: its next message is delivered (and the transaction, ending after the one
    // before it was counted, shows that no second record came of it).
    const delivered = await relay.send(sender, [rcpt('gmail', 'a')]);
    assert.equal(delivered.data?.code, 250);
    assert.equal(explained(delivered.record)[0].result, 'delivered');
    assert.equal(relay.abuse(sender).length, 1, JSON.stringify(relay.abuse(sender)));
    assert.equal(await flaggedCount(), flaggedBefore + 1);
    assert.deepEqual(await relay.world.relay.abuse.holds(), []);
  });

  it('one provider refusing many recipients as spam, at RCPT and at the end of DATA, is not enough', async () => {
    const sender = 'bob@example.test';
    const flaggedBefore = await flaggedCount();
    const atRcpt = await relay.send(sender, [rcpt('gmail', 'b'), rcpt('gmail', 'b'), rcpt('gmail', 'b')], { gmail: SPAM.gmailRcpt });
    assert.deepEqual(atRcpt.rcpts.map((r) => r.code), [550, 550, 550]);
    const atData = await relay.send(sender, [rcpt('gmail', 'b'), rcpt('gmail', 'b')], { gmail: SPAM.gmailData });
    assert.equal(atData.data?.code, 550);
    const lowReputation = await relay.send(sender, [rcpt('gmail', 'b')], { gmail: SPAM.gmailDataReputation });
    assert.equal(lowReputation.data?.code, 550);
    // Six recipients refused as spam, every one by Gmail.
    const read = [atRcpt, atData, lowReputation].flatMap((sent) => explained(sent.record));
    assert.deepEqual(read.map((r) => [r.category, r.provider]), [...Array(3).fill(['reputation', 'gmail']), ...Array(2).fill(['content', 'gmail']), ['reputation', 'gmail']]);
    // A transaction after the last one was counted: still nobody flagged.
    assert.equal((await relay.send(sender, [rcpt('gmail', 'b')])).data?.code, 250);
    assert.deepEqual(relay.abuse(sender), []);
    assert.equal(await flaggedCount(), flaggedBefore);

    // A second provider makes it two: Gmail's refusals were kept all along, as one provider.
    await relay.send(sender, [rcpt('microsoft', 'b')], { microsoft: SPAM.microsoftRcpt });
    assert.equal((await relay.waitForAbuse(sender)).flagged, 'refused as spam by gmail, microsoft within an hour');
    assert.equal(await flaggedCount(), flaggedBefore + 1);
  });

  it("refusals in other categories (Gmail's 550 5.1.1 unknown account, 550 5.7.26 unauthenticated) do not count", async () => {
    const sender = 'carol@example.test';
    const flaggedBefore = await flaggedCount();
    const unknown = await relay.send(sender, [rcpt('gmail', 'c')], { gmail: NOT_SPAM.gmailUnknown });
    assert.equal(unknown.rcpts[0].code, 550);
    assert.ok(unknown.rcpts[0].text.startsWith('5.1.1 '), unknown.rcpts[0].text);
    const unauthenticated = await relay.send(sender, [rcpt('gmail', 'c')], { gmail: NOT_SPAM.gmailUnauthenticated });
    assert.equal(unauthenticated.data?.code, 550);
    assert.ok(unauthenticated.data?.text.startsWith('5.7.26 '), unauthenticated.data?.text);
    assert.deepEqual([...explained(unknown.record), ...explained(unauthenticated.record)].map((r) => [r.category, r.rule, r.provider]), [
      ['recipient', 'gmail-no-such-user', 'gmail'],
      ['authentication', 'gmail-unauthenticated', 'gmail'],
    ]);
    // Microsoft refuses it as spam: had Gmail's refusals counted, that would be two providers.
    await relay.send(sender, [rcpt('microsoft', 'c')], { microsoft: SPAM.microsoftRcpt });
    assert.equal((await relay.send(sender, [rcpt('isp', 'c')])).data?.code, 250);
    assert.deepEqual(relay.abuse(sender), []);
    assert.equal(await flaggedCount(), flaggedBefore);

    // Gmail refusing it as spam now is the second provider: the guard was watching it.
    await relay.send(sender, [rcpt('gmail', 'c')], { gmail: SPAM.gmailData });
    assert.equal((await relay.waitForAbuse(sender)).flagged, 'refused as spam by gmail, microsoft within an hour');
  });

  it('a destination the registry does not know is a provider of its own, under its recipient domain', async () => {
    const sender = 'dave@example.test';
    const isp = await relay.send(sender, [rcpt('isp', 'd')], { isp: SPAM.ispRcpt });
    assert.equal(isp.rcpts[0].code, 554);
    assert.deepEqual(explained(isp.record).map((r) => [r.category, r.rule, r.provider]), [['reputation', 'reputation', undefined]]);
    await relay.send(sender, [rcpt('gmail', 'd')], { gmail: SPAM.gmailRcpt });
    assert.equal((await relay.waitForAbuse(sender)).flagged, 'refused as spam by gmail, isp.test within an hour');
  });

  it("Gmail deferring its mail for a very low reputation (421 4.7.0, retried three times) and Microsoft refusing it as spam: not flagged; Gmail refusing it for good (550 5.7.1) makes two", async () => {
    const sender = 'heidi@example.test';
    const flaggedBefore = await flaggedCount();
    // The client retries what was deferred: the same recipient, three times, deferred each time.
    const gmail = rcpt('gmail', 'h');
    for (let attempt = 1; attempt <= 3; attempt++) {
      const deferred = await relay.send(sender, [gmail], { gmail: DEFERRED.gmailReputation });
      assert.equal(deferred.rcpts[0].code, 250);
      assert.equal(deferred.data?.code, 451, `attempt ${attempt}: the client is told to retry`);
      assert.ok(deferred.data?.text.startsWith(`4.7.0 ${MX.gmail.host} [${MX.gmail.ip}] said: This message is suspicious due to the very low reputation of the sending IP`), deferred.data?.text);
      assert.deepEqual(explained(deferred.record), [{ address: gmail, result: 'deferred', category: 'reputation', rule: 'gmail-low-reputation-deferred', provider: 'gmail' }]);
    }
    const outlook = rcpt('microsoft', 'h');
    const refused = await relay.send(sender, [outlook], { microsoft: SPAM.microsoftRcpt });
    assert.equal(refused.rcpts[0].code, 550);
    assert.deepEqual(explained(refused.record), [{ address: outlook, result: 'refused', category: 'reputation', rule: 'microsoft-block-list', provider: 'microsoft' }]);
    // A transaction after the last one was counted: nobody flagged, its mail goes.
    assert.equal((await relay.send(sender, [rcpt('isp', 'h')])).data?.code, 250);
    assert.deepEqual(relay.abuse(sender), []);
    assert.equal(await flaggedCount(), flaggedBefore);

    // Gmail refusing the retry for good, for the same reputation: the second provider.
    const final = await relay.send(sender, [gmail], { gmail: SPAM.gmailDataReputation });
    assert.equal(final.data?.code, 550);
    assert.deepEqual(explained(final.record), [{ address: gmail, result: 'refused', category: 'reputation', rule: 'gmail-low-reputation', provider: 'gmail' }]);
    const flag = await relay.waitForAbuse(sender);
    assert.equal(flag.reason, 'spam_refusals');
    assert.equal(flag.flagged, 'refused as spam by gmail, microsoft within an hour');
    assert.equal(await flaggedCount(), flaggedBefore + 1);
  });

  it("a public blocklist's listing of the egress IP (Yahoo's 553 [BL23] Spamhaus XBL, an unknown MX's zen.spamhaus.org) with Microsoft refusing the sender as spam: not flagged; Gmail's refusal makes two, the listings named nowhere", async () => {
    const sender = 'ivan@example.test';
    const flaggedBefore = await flaggedCount();
    const atYahoo = rcpt('yahoo', 'i');
    const yahoo = await relay.send(sender, [atYahoo], { yahoo: LISTED.yahooSpamhaus });
    assert.equal(yahoo.rcpts[0].code, 553);
    assert.ok(yahoo.rcpts[0].text.startsWith(`5.7.1 ${MX.yahoo.host} [${MX.yahoo.ip}] said: [BL23] Connections not accepted from IP addresses on Spamhaus XBL`), yahoo.rcpts[0].text);
    assert.deepEqual(explained(yahoo.record), [{ address: atYahoo, result: 'refused', category: 'reputation', rule: 'yahoo-spamhaus', provider: 'yahoo' }]);
    const atIsp = rcpt('isp', 'i');
    const isp = await relay.send(sender, [atIsp], { isp: LISTED.ispBlocklist });
    assert.equal(isp.rcpts[0].code, 554);
    assert.ok(isp.rcpts[0].text.startsWith(`5.7.1 ${MX.isp.host} [${MX.isp.ip}] said: Service unavailable; Client host [203.0.113.10] blocked using zen.spamhaus.org`), isp.rcpts[0].text);
    assert.deepEqual(explained(isp.record), [{ address: atIsp, result: 'refused', category: 'reputation', rule: 'blocklist', provider: undefined }]);
    await relay.send(sender, [rcpt('microsoft', 'i')], { microsoft: SPAM.microsoftRcpt });
    // Had the listings counted, that would be three providers. A transaction after the last one was counted: nobody flagged.
    assert.equal((await relay.send(sender, [rcpt('isp', 'i')])).data?.code, 250);
    assert.deepEqual(relay.abuse(sender), []);
    assert.equal(await flaggedCount(), flaggedBefore);

    await relay.send(sender, [rcpt('gmail', 'i')], { gmail: SPAM.gmailRcpt });
    assert.equal((await relay.waitForAbuse(sender)).flagged, 'refused as spam by gmail, microsoft within an hour');
    assert.equal(await flaggedCount(), flaggedBefore + 1);
  });
});

describe("the providers' own verdict under abuse.hold: the sender is held", () => {
  const relay = new ProviderMxs();
  before(() => relay.start({ abuse: { hold: true } }));
  after(() => relay.close());

  it("after the second provider's refusal as spam its next recipient is refused 550 5.7.1 without reaching anyone; another sender's mail goes", async () => {
    const sender = 'erin@example.test';
    const other = 'frank@example.test';
    // Gmail refuses the message at the end of DATA, Microsoft the recipient at RCPT.
    assert.equal((await relay.send(sender, [rcpt('gmail', 'e')], { gmail: SPAM.gmailData })).data?.code, 550);
    assert.equal((await relay.send(sender, [rcpt('gmail', 'e')])).data?.code, 250, 'one provider: not held, its mail still goes');
    assert.deepEqual(relay.abuse(sender), []);
    await relay.send(sender, [rcpt('microsoft', 'e')], { microsoft: SPAM.microsoftRcpt });
    const flag = await relay.waitForAbuse(sender);
    assert.equal(flag.reason, 'spam_refusals');
    assert.equal(flag.flagged, 'refused as spam by gmail, microsoft within an hour');
    assert.equal(flag.action, 'held: every recipient is refused 550 5.7.1 until `hygiene-relay abuse release erin@example.test`');

    const next = rcpt('gmail', 'e');
    const held = await relay.send(sender, [next]);
    assert.equal(held.rcpts[0].code, 550);
    assert.match(
      held.rcpts[0].text,
      /^5\.7\.1 sender <erin@example\.test> is held by the relay's abuse guard since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(refused as spam by gmail, microsoft within an hour\); ask the mail administrator to release it$/,
    );
    assert.equal(held.data, undefined);
    assert.ok(!relay.mxs.get('gmail')!.log.some((line) => line.includes(next)), 'the held recipient never reached Gmail');
    const holds = await relay.world.relay.abuse.holds();
    assert.deepEqual(holds.map(({ kind, who, why }) => ({ kind, who, why })), [{ kind: 'sender', who: sender, why: 'refused as spam by gmail, microsoft within an hour' }]);

    const free = await relay.send(other, [rcpt('gmail', 'f')]);
    assert.equal(free.rcpts[0].code, 250);
    assert.equal(free.data?.code, 250);
    assert.equal(explained(free.record)[0].result, 'delivered');
  });

  it('hygiene_relay_abuse_held_recipients_total counts the recipients refused for the hold, and nothing for the hold itself', async () => {
    const sender = 'grace@example.test';
    await relay.send(sender, [rcpt('gmail', 'g')], { gmail: SPAM.gmailRcpt });
    // Read before the flag: whatever the flag itself counted is in the difference.
    const heldBefore = await heldCount();
    await relay.send(sender, [rcpt('microsoft', 'g')], { microsoft: SPAM.microsoftRcpt });
    assert.match(String((await relay.waitForAbuse(sender)).action), /^held: /);
    const held = await relay.send(sender, [rcpt('gmail', 'g'), rcpt('microsoft', 'g')]);
    assert.deepEqual(held.rcpts.map((r) => r.code), [550, 550]);
    assert.equal(await heldCount(), heldBefore + 2, 'two recipients refused for the hold');
  });

  it("listed by Spamhaus at Yahoo and at an unknown MX, deferred by Gmail, refused as spam by Microsoft: not held, its next message is delivered", async () => {
    const sender = 'judy@example.test';
    assert.equal((await relay.send(sender, [rcpt('yahoo', 'j')], { yahoo: LISTED.yahooSpamhaus })).rcpts[0].code, 553);
    assert.equal((await relay.send(sender, [rcpt('isp', 'j')], { isp: LISTED.ispBlocklist })).rcpts[0].code, 554);
    assert.equal((await relay.send(sender, [rcpt('gmail', 'j')], { gmail: DEFERRED.gmailReputation })).data?.code, 451);
    assert.equal((await relay.send(sender, [rcpt('microsoft', 'j')], { microsoft: SPAM.microsoftRcpt })).rcpts[0].code, 550);
    const next = await relay.send(sender, [rcpt('gmail', 'j'), rcpt('yahoo', 'j')]);
    assert.deepEqual(next.rcpts.map((r) => r.code), [250, 250]);
    assert.equal(next.data?.code, 250);
    assert.deepEqual(explained(next.record).map((r) => r.result), ['delivered', 'delivered']);
    assert.deepEqual(relay.abuse(sender), []);
    assert.ok(!(await relay.world.relay.abuse.holds()).some((hold) => hold.who === sender), 'no hold for it');
  });
});

describe("the providers' own verdict counts towards the sender's episode", () => {
  const USERS = ['spammed', 'unknowns', 'accepted', 'deferred', 'listed'];
  const relay = new ProviderMxs();
  before(async () => {
    const password = await hashPassword(PASSWORD);
    await relay.start({
      listeners: [{ host: '127.0.0.1', port: 0, allowInsecureAuth: true }],
      clients: { networks: ['127.0.0.1/32'], users: USERS.map((name) => ({ name, password })) },
      // Six recipients an hour for each user; messages not limited, so recipients alone decide.
      abuse: { limits: { messages: { perMinute: false, perHour: false, perDay: false } }, overrides: USERS.map((user) => ({ user, perHour: 6 })) },
    });
  });
  after(() => relay.close());

  /** One-recipient transactions as `user` until the relay answers 451: the RCPT codes. Each goes to the MX playing (Gmail when none plays). */
  async function untilLimited(user: string, plays: (i: number) => Partial<Record<MxName, PlaybookExample>>): Promise<number[]> {
    const codes: number[] = [];
    for (let i = 0; i < 10; i++) {
      const play = plays(i);
      const mx = (Object.keys(play)[0] as MxName | undefined) ?? 'gmail';
      const sent = await relay.send(`${user}@example.test`, [rcpt(mx, user)], play, user);
      codes.push(sent.rcpts[0].code);
      if (sent.rcpts[0].code === 451) {
        assert.match(sent.rcpts[0].text, new RegExp(`^4\\.7\\.1 user ${user} is over its limit of 6 recipients per hour; try again after `));
        break;
      }
    }
    return codes;
  }

  const overOf = (user: string) => {
    const records = relay.world.logs.records.filter((r) => r.msg === 'abuse' && r.user === user);
    assert.equal(records.length, 1, JSON.stringify(records));
    assert.equal(records[0].reason, 'limit');
    return (records[0].over as { counted: string; unit: string; limit: number; count: number }[]).map((o) => [o.counted, o.unit, o.limit, o.count]);
  };

  it('accepted mail: six recipients go, the seventh is answered 451', async () => {
    assert.deepEqual(await untilLimited('accepted', () => ({})), [250, 250, 250, 250, 250, 250, 451]);
    assert.deepEqual(overOf('accepted'), [['user', 'recipients', 6, 7]]);
  });

  it('refused for another reason (550 5.1.1): each still costs one, the seventh is answered 451', async () => {
    assert.deepEqual(await untilLimited('unknowns', () => ({ gmail: NOT_SPAM.gmailUnknown })), [550, 550, 550, 550, 550, 550, 451]);
    assert.deepEqual(overOf('unknowns'), [['user', 'recipients', 6, 7]]);
  });

  it('refused as spam (at RCPT and at the end of DATA): each costs two, the fourth is answered 451', async () => {
    // RCPT refused, DATA refused, RCPT refused: 3 recipients, 6 counted.
    const plays = [{ gmail: SPAM.gmailRcpt }, { gmail: SPAM.gmailData }, { gmail: SPAM.gmailRcpt }];
    assert.deepEqual(await untilLimited('spammed', (i) => plays[i] ?? {}), [550, 250, 550, 451]);
    assert.deepEqual(overOf('spammed'), [['user', 'recipients', 6, 7]]);
    // One provider only: the limit's episode, no spam flag.
    assert.ok(!relay.world.logs.records.some((r) => r.msg === 'abuse' && r.reason === 'spam_refusals'));
  });

  it('deferred by Gmail for its reputation (421 4.7.0 at the end of DATA): each costs one, the seventh is answered 451', async () => {
    // Had a deferral counted as a refusal, each would cost two and the fourth would be answered 451.
    assert.deepEqual(await untilLimited('deferred', () => ({ gmail: DEFERRED.gmailReputation })), [250, 250, 250, 250, 250, 250, 451]);
    assert.deepEqual(overOf('deferred'), [['user', 'recipients', 6, 7]]);
  });

  it("listed by Spamhaus (Yahoo's 553 [BL23], an unknown MX's zen.spamhaus.org), then refused as spam by Microsoft: the listings cost one each, the spam refusal two, the sixth is answered 451; not flagged", async () => {
    // Yahoo 1, the ISP 1, Microsoft 2, two accepted: 6. Had the listings counted, the fourth would be answered 451.
    const plays = [{ yahoo: LISTED.yahooSpamhaus }, { isp: LISTED.ispBlocklist }, { microsoft: SPAM.microsoftRcpt }];
    assert.deepEqual(await untilLimited('listed', (i) => plays[i] ?? {}), [553, 554, 550, 250, 250, 451]);
    // Its one abuse record is the limit's: no spam flag for three providers' refusals, two of them listings.
    assert.deepEqual(overOf('listed'), [['user', 'recipients', 6, 7]]);
  });
});

describe("an admin's playbook row (delivery.playbook) may say its reply is a listing", () => {
  /** The ISP's own list of the egress IP: without this row the shipped generic `reputation` rule reads it (and it counts). */
  const ROWS = `rules:
  - id: isp-own-list
    listing: true
    text: listed at reputation\\.isp\\.test
    category: reputation
    permanence: permanent
    remediation: The ISP lists the egress IP on its own reputation list; ask its postmaster to delist it.
    examples:
      - at: rcpt
        reply: 554 5.7.1 Client host [203.0.113.10] is listed at reputation.isp.test
`;
  const relay = new ProviderMxs();
  let dir: string;
  let ownList: PlaybookExample;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-abuse-playbook-'));
    const file = path.join(dir, 'playbook.yaml');
    writeFileSync(file, ROWS);
    // The admin's row's own example, as the relay loads it.
    const row = Playbook.load(Providers.load(), file).rules.find((r) => r.id === 'isp-own-list');
    assert.equal(row?.listing, true);
    ownList = row.examples[0];
    await relay.start({}, { playbook: file });
  });
  after(async () => {
    await relay.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("the ISP's own list under the admin's row does not count with Microsoft's spam refusal; the same ISP refusing the sender for a poor reputation does", async () => {
    assert.equal(playbook.classify(ownList.reply, { mxHost: MX.isp.host })?.rule, 'reputation', 'the shipped table alone would count it');
    const sender = 'kim@example.test';
    const flaggedBefore = await flaggedCount();
    const atIsp = rcpt('isp', 'k');
    const listed = await relay.send(sender, [atIsp], { isp: ownList });
    assert.equal(listed.rcpts[0].code, 554);
    assert.ok(listed.rcpts[0].text.startsWith(`5.7.1 ${MX.isp.host} [${MX.isp.ip}] said: Client host [203.0.113.10] is listed at reputation.isp.test`), listed.rcpts[0].text);
    assert.deepEqual(explained(listed.record), [{ address: atIsp, result: 'refused', category: 'reputation', rule: 'isp-own-list', provider: undefined }]);
    await relay.send(sender, [rcpt('microsoft', 'k')], { microsoft: SPAM.microsoftRcpt });
    // A transaction after the last one was counted: nobody flagged.
    assert.equal((await relay.send(sender, [rcpt('gmail', 'k')])).data?.code, 250);
    assert.deepEqual(relay.abuse(sender), []);
    assert.equal(await flaggedCount(), flaggedBefore);

    const spam = await relay.send(sender, [rcpt('isp', 'k')], { isp: SPAM.ispRcpt });
    assert.equal(explained(spam.record)[0].rule, 'reputation');
    assert.equal((await relay.waitForAbuse(sender)).flagged, 'refused as spam by isp.test, microsoft within an hour');
    assert.equal(await flaggedCount(), flaggedBefore + 1);
  });
});
