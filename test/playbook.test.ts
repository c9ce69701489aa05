import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { Playbook, PlaybookError, Providers, type PlaybookExample, type PlaybookRule } from '../src/delivery/index.ts';
import type { Reply } from '../src/smtp/index.ts';
import { enhancedOf, formatReply } from '../src/smtp/index.ts';
import { RawMx, type RawAnswer } from './harness/raw-mx.ts';
import { send } from './harness/send.ts';
import { message, World } from './harness/world.ts';

/**
 * Each provider's MX under a host name of that provider, so the relay recognises it as it
 * would on the internet; replies of the generic rules come from an MX nobody knows.
 */
const MX = {
  gmail: { domain: 'gmail.test', host: 'gmail-smtp-in.l.google.com', ip: '127.0.0.60' },
  microsoft: { domain: 'outlook.test', host: 'outlook-test.mail.protection.outlook.com', ip: '127.0.0.61' },
  yahoo: { domain: 'yahoo.test', host: 'mta5.am0.yahoodns.net', ip: '127.0.0.62' },
  apple: { domain: 'icloud.test', host: 'mx01.mail.icloud.com', ip: '127.0.0.63' },
  bt: { domain: 'btinternet.test', host: 'mx.bt.lon5.cpcloud.co.uk', ip: '127.0.0.64' },
  generic: { domain: 'isp.test', host: 'mx.isp.test', ip: '127.0.0.65' },
} as const;
type MxName = keyof typeof MX;

function mxOf(rule: PlaybookRule): MxName {
  const name = rule.provider ?? 'generic';
  assert.ok(name in MX, `no simulated MX for provider ${name}`);
  return name as MxName;
}

const TABLE = readFileSync(new URL('../src/delivery/playbook.yaml', import.meta.url), 'utf8');
const providers = Providers.load();
const playbook = Playbook.load(providers);
const classifyReply = (reply: Reply, options?: { mxHost?: string }) => playbook.classify(reply, options);

/** The rules whose reply names a public blocklist's listing of the egress IP or a domain (Spamhaus, Proofpoint, any DNSBL). */
const LISTINGS = ['apple-blocklist', 'blocklist', 'blocklist-deferred', 'microsoft-spamhaus-domain', 'yahoo-spamhaus'];

/** An admin's own rows (delivery.playbook): a list of its own ISP, and the shipped generic blocklist row restated to count as a verdict on the sender. */
const ADMIN_ROWS = `rules:
  - id: isp-own-list
    listing: true
    text: listed at reputation\\.isp\\.test
    category: reputation
    permanence: permanent
    remediation: The ISP lists the egress IP on its own reputation list; ask its postmaster to delist it.
    examples:
      - at: rcpt
        reply: 554 5.7.1 Client host [203.0.113.10] is listed at reputation.isp.test
  - id: blocklist
    listing: false
    text: spamhaus|barracuda|spamcop|\\bblock ?list|\\bblack ?list|\\bRBL\\b|\\bDNSBL\\b
    category: reputation
    permanence: permanent
    remediation: The reply names a blocklist; look the egress IP up on it and request removal (corp policy, counted against the sender too).
    examples:
      - at: rcpt
        reply: '554 5.7.1 Service unavailable; Client host [203.0.113.10] blocked using zen.spamhaus.org'
`;

/** Runs `body` with `text` as an admin's playbook file, removed after. */
function withAdminFile<T>(text: string, body: (file: string) => T): T {
  const dir = mkdtempSync(path.join(tmpdir(), 'relay-playbook-listing-'));
  try {
    const file = path.join(dir, 'playbook.yaml');
    writeFileSync(file, text);
    return body(file);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('reply playbook: every reply of the table, played by a destination', () => {
  let world: World;
  const mxs: RawMx[] = [];
  /** What the destination under test says, and when; the others behave. */
  let playing: { mx: MxName; example: PlaybookExample } | undefined;

  const answer = (mx: MxName, command: string): RawAnswer => {
    if (playing?.mx !== mx) return undefined;
    const { at, wire } = playing.example;
    const verb = command.slice(0, 4).toUpperCase();
    // After an EHLO refusal the relay tries HELO (RFC 5321 §3.2): the provider refuses that too.
    if (at === 'ehlo' && (verb === 'EHLO' || verb === 'HELO')) return wire;
    if (at === 'mail' && verb === 'MAIL') return wire;
    if (at === 'rcpt' && verb === 'RCPT') return wire;
    if (at === 'data' && command === '.') return wire;
    return undefined;
  };

  before(async () => {
    // Every example needs a session of its own (some play at the greeting), and the pause a
    // throttling example triggers in shaping would hold up the examples after it.
    // Monitor: the destinations' own replies are under test, not the relay's judgement (Gmail's
    // profile wants TLS, which these raw MX hosts do not offer).
    // One sender sending a hundred messages a minute, half of them refused as spam: what the
    // outbound abuse guard stops (test/abuse-*.test.ts), not what this tests.
    const unlimited = { perMinute: false, perHour: false, perDay: false, messages: { perMinute: false, perHour: false, perDay: false } } as const;
    world = await World.start({
      destinations: [],
      config: (internet) => ({ defaultPolicy: 'monitor', delivery: internet.deliverySettings({ pool: { maxIdle: 0 }, shaping: false }), abuse: { limits: unlimited, addressLimits: unlimited, anomaly: false } }),
    });
    for (const [name, mx] of Object.entries(MX) as [MxName, (typeof MX)[MxName]][]) {
      world.dns.add(mx.domain, { type: 'MX', data: { preference: 10, exchange: mx.host } });
      world.dns.add(mx.host, { type: 'A', data: mx.ip });
      const greeting = (): string => (playing?.mx === name && playing.example.at === 'greeting' ? playing.example.wire : '220 raw.test ESMTP');
      mxs.push(await RawMx.start(mx.ip, world.mxPort, (command) => answer(name, command), { greeting }));
    }
  });
  after(async () => {
    await Promise.all(mxs.map((mx) => mx.close()));
    await world.close();
  });
  beforeEach(() => {
    playing = undefined;
  });

  it('has rows for every provider of the reference and a row for every reply class', () => {
    for (const provider of ['gmail', 'microsoft', 'yahoo', 'apple', 'bt']) {
      assert.ok(playbook.rules.some((rule) => rule.provider === provider), `no rows for ${provider}`);
    }
    for (let code = 400; code <= 599; code++) {
      assert.ok(classifyReply({ code, lines: ['anything'] }), `${code} unclassified`);
      assert.ok(classifyReply({ code, enhanced: `${Math.floor(code / 100)}.9.9`, lines: [''] }, { mxHost: 'mx.nowhere.test' }), `${code} 9.9 unclassified`);
    }
    assert.equal(classifyReply({ code: 250, enhanced: '2.0.0', lines: ['OK'] }), undefined);
  });

  for (const rule of playbook.rules) {
    rule.examples.forEach((example, i) => {
      const label = `${rule.id}${rule.examples.length > 1 ? ` (${i + 1})` : ''} at ${example.at}: ${formatReply(example.reply).slice(0, 60)}`;
      it(label, async () => {
        const name = mxOf(rule);
        const mx = MX[name];
        const recipient = `${rule.id}.${i}@${mx.domain}`;
        playing = { mx: name, example };
        const result = await send(world.port, 'alice@example.test', [recipient], message({ to: recipient, subject: rule.id }));
        const record = await world.logs.waitFor((r) => r.msg === 'transaction' && (r.envelope as { rcptTo: string[] }).rcptTo.includes(recipient));

        // What the client hears: the destination's own code, enhanced code and text, prefixed
        // with who said it. A 421 ends only the relay's session with that destination, so it
        // reaches the client as 451 (RFC 5321 §3.8), class and enhanced code unchanged.
        const said = example.reply;
        const text = said.lines.join(' ');
        if ((example.at === 'greeting' || example.at === 'ehlo') && said.code < 500) {
          // A host that refuses the session for now: 451 with its own enhanced code and words.
          assert.equal(result.rcpts[0].code, 451);
          assert.ok(result.rcpts[0].text.startsWith(`${enhancedOf(said)} ${mx.host} [${mx.ip}] said: ${text.slice(0, 200)}`), result.rcpts[0].text);
        } else if (example.at === 'greeting' || example.at === 'ehlo') {
          // A host that will not talk at all is skipped for the next MX (RFC 5321 §5.1), never a
          // bounce; when none is left the relay defers with 4.4.1 and quotes each host's own reply.
          assert.equal(result.rcpts[0].code, 451);
          assert.match(result.rcpts[0].text, /^4\.4\.1 no mail server of the destination could be reached \(/);
          assert.ok(result.rcpts[0].text.includes(`${mx.host} [${mx.ip}]: ${formatReply(said)}`), result.rcpts[0].text);
        } else {
          const client = example.at === 'data' ? result.data : result.rcpts[0];
          if (example.at === 'data') assert.equal(result.rcpts[0].code, 250);
          assert.ok(client, 'the client got an answer at that stage');
          assert.equal(client.code, said.code === 421 ? 451 : said.code);
          const prefix = `${enhancedOf(said)} ${mx.host} [${mx.ip}] said: `;
          assert.ok(client.text.startsWith(prefix + text.slice(0, 200)), `${client.text}\n  expected to start with\n${prefix}${text.slice(0, 200)}`);
          assert.ok(client.text.endsWith(`(relay id ${record.id})`), client.text);
        }

        // What the admin reads: the table's category and remediation, and which row said so.
        const explained = { category: rule.category, remediation: rule.remediation, rule: rule.id, provider: rule.provider };
        const recipients = record.recipients as Record<string, unknown>[];
        assert.deepEqual(pick(recipients[0]), explained);
        const upstream = record.upstream as Record<string, unknown>[];
        if (example.at !== 'rcpt') assert.deepEqual(pick(upstream[0]), explained, 'the upstream session record explains its refusal');
        if (example.at === 'data') assert.deepEqual(pick(record), explained, "the transaction's answer is the destination's refusal");
      });
    });
  }
});

function pick(record: Record<string, unknown>): Record<string, unknown> {
  return { category: record.category, remediation: record.remediation, rule: record.rule, provider: record.provider };
}

describe('reply playbook: classification', () => {
  const providerOf = (host: string) => providers.of([host])?.name;

  it('recognises providers by MX host suffix', () => {
    assert.equal(providerOf('GMAIL-SMTP-IN.L.GOOGLE.COM.'), 'gmail');
    assert.equal(providerOf('aspmx.l.google.com'), 'gmail');
    assert.equal(providerOf('contoso-com.mail.protection.outlook.com'), 'microsoft');
    assert.equal(providerOf('mx-aol.mail.gm0.yahoodns.net'), 'yahoo');
    assert.equal(providerOf('mx.bt.lon5.cpcloud.co.uk'), 'bt');
    assert.equal(providerOf('notgoogle.com'), undefined);
    assert.equal(providerOf('mx.isp.test'), undefined);
  });

  it('classifies a reply that names itself without the MX host', () => {
    for (const rule of playbook.rules.filter((r) => !r.needsMx)) {
      for (const example of rule.examples) assert.equal(classifyReply(example.reply)?.rule, rule.id, formatReply(example.reply));
    }
  });

  it('applies a provider rule with a generic pattern only behind that provider, and falls back to the same category elsewhere', () => {
    const overQuota = { code: 552, enhanced: '5.2.2', lines: ['<bob@icloud.test>: user is over quota'] };
    assert.equal(classifyReply(overQuota, { mxHost: 'mx01.mail.icloud.com' })?.rule, 'apple-over-quota');
    assert.deepEqual(classifyReply(overQuota, { mxHost: 'mx.isp.test' }), {
      category: 'mailbox-full',
      permanence: 'permanent',
      remediation: "The recipient's mailbox is full: reach the recipient another way.",
      rule: 'mailbox-full',
      pause: false,
    });
    const spamhaus = { code: 554, enhanced: '5.7.1', lines: ['Service unavailable; Client host [203.0.113.10] blocked using zen.spamhaus.org'] };
    assert.equal(classifyReply(spamhaus)?.rule, 'blocklist');
    assert.equal(classifyReply(spamhaus, { mxHost: 'mx02.mail.icloud.com' })?.rule, 'apple-blocklist');
  });

  it("skips other providers' rules behind a known provider, and names the provider on generic rules", () => {
    const tss04 = { code: 421, enhanced: '4.7.0', lines: ['[TSS04] Messages from 203.0.113.10 temporarily deferred due to unexpected volume or user complaints'] };
    assert.equal(classifyReply(tss04)?.rule, 'yahoo-tss04');
    assert.equal(classifyReply(tss04)?.pause, true, 'Yahoo asks to cut the volume: shaping pauses it');
    assert.deepEqual(classifyReply(tss04, { mxHost: 'gmail-smtp-in.l.google.com' }), {
      category: 'tls-policy',
      permanence: 'temporary',
      remediation: playbook.rules.find((r) => r.id === 'policy-deferred')!.remediation,
      rule: 'policy-deferred',
      pause: false,
      provider: 'gmail',
    });
  });

  it("marks exactly the public blocklists' listings as listing, every other rule false by default", () => {
    assert.deepEqual(
      playbook.rules
        .filter((rule) => rule.listing)
        .map((rule) => rule.id)
        .sort(),
      LISTINGS,
    );
    // False by default: the shipped table never writes `listing: false`, and every rule still says false, not nothing.
    assert.ok(!/^\s*listing: false/m.test(TABLE));
    for (const rule of playbook.rules.filter((r) => !LISTINGS.includes(r.id))) assert.equal(rule.listing, false, rule.id);
    // A listing is the relay's reputation; the verdicts on the sender's own mail in that category are not listings.
    for (const id of LISTINGS) assert.equal(playbook.rules.find((r) => r.id === id)?.category, 'reputation', id);
    for (const id of ['gmail-low-reputation', 'gmail-low-reputation-deferred', 'gmail-blocked-unsolicited', 'microsoft-block-list', 'reputation']) {
      const rule = playbook.rules.find((r) => r.id === id);
      assert.deepEqual([rule?.category, rule?.listing], ['reputation', false], id);
    }
    // Each listing's own examples name a list.
    for (const id of LISTINGS) for (const example of playbook.rules.find((r) => r.id === id)!.examples) assert.match(formatReply(example.reply), /spamhaus|proofpoint|barracuda/i, id);
  });

  it("an admin's row (delivery.playbook) sets listing: a new row true, a shipped row restated false, a row without it false", () => {
    const own = withAdminFile(ADMIN_ROWS, (file) => Playbook.load(providers, file));
    const listingOf = (id: string) => own.rules.find((rule) => rule.id === id)?.listing;
    assert.equal(listingOf('isp-own-list'), true);
    assert.equal(listingOf('blocklist'), false);
    // The shipped rows the admin did not restate keep theirs.
    for (const id of LISTINGS.filter((id) => id !== 'blocklist')) assert.equal(listingOf(id), true, id);
    assert.equal(listingOf('reputation'), false);
    // The admin's row reads its ISP's reply, which the shipped table alone reads as the generic reputation rule.
    const ispList = { code: 554, enhanced: '5.7.1', lines: ['Client host [203.0.113.10] is listed at reputation.isp.test'] };
    assert.equal(classifyReply(ispList, { mxHost: 'mx.isp.test' })?.rule, 'reputation');
    assert.equal(own.classify(ispList, { mxHost: 'mx.isp.test' })?.rule, 'isp-own-list');
    // A row of the admin's without the field: false.
    const withoutField = ADMIN_ROWS.replace('    listing: true\n', '');
    assert.notEqual(withoutField, ADMIN_ROWS);
    assert.equal(
      withAdminFile(withoutField, (file) => Playbook.load(providers, file)).rules.find((rule) => rule.id === 'isp-own-list')?.listing,
      false,
    );
  });

  it('reads Gmail 5.7.40 by its text: a missing DMARC record, not an AUTH refusal', () => {
    const auth = { code: 535, enhanced: '5.7.40', lines: ['Unrecognized authentication type'] };
    assert.equal(classifyReply(auth, { mxHost: 'gmail-smtp-in.l.google.com' })?.rule, 'policy');
    const dmarc = { code: 550, enhanced: '5.7.40', lines: ["The sender domain example.com doesn't have a DMARC record."] };
    assert.equal(classifyReply(dmarc, { mxHost: 'gmail-smtp-in.l.google.com' })?.rule, 'gmail-no-dmarc-record');
  });

  it('matches Gmail text wrapped over continuation lines, and a 421 whose enhanced code has the wrong class', () => {
    const wrapped = {
      code: 550,
      enhanced: '5.7.26',
      lines: ['This mail has been blocked because the sender is unauthenticated. Gmail requires all', 'senders to authenticate with either', 'SPF or DKIM.'],
    };
    assert.equal(classifyReply(wrapped, { mxHost: 'gmail-smtp-in.l.google.com' })?.rule, 'gmail-unauthenticated');
    // "421 5.7.32": RFC 3463 §2 makes the class follow the reply code, so the parser keeps 5.7.32 as text.
    const misprinted = { code: 421, lines: ['5.7.32 Your email has been rate limited because the From: header (RFC5322) in this', "5.7.32 message isn't aligned with either the authenticated SPF or DKIM organizational domain."] };
    assert.deepEqual(classifyReply(misprinted), {
      category: 'authentication',
      permanence: 'temporary',
      remediation: playbook.rules.find((r) => r.id === 'gmail-not-aligned')!.remediation,
      rule: 'gmail-not-aligned',
      pause: false,
      provider: 'gmail',
    });
  });
});

describe('reply playbook: a malformed table fails loudly', () => {
  const broken = (from: string, to: string): (() => Playbook) => {
    assert.ok(TABLE.includes(from), `the table no longer contains ${JSON.stringify(from)}`);
    return () => Playbook.parse(TABLE.replace(from, to), providers, 'playbook.yaml');
  };

  it('loads the real table', () => {
    assert.equal(Playbook.parse(TABLE, providers).rules.length, playbook.rules.length);
  });

  it('names the row and the field of each problem', () => {
    const cases: [string, string, RegExp][] = [
      ['category: content', 'category: spam', /rules\[\d+\] \(gmail-unsolicited\)\.category: Invalid option/],
      ['    code: [550]\n    enhanced: [5.7.26]\n    text: senders', '    code: [450]\n    enhanced: [5.7.26]\n    text: senders', /\(gmail-unauthenticated\)\.code: 450 is not permanent/],
      ['enhanced: [5.7.515]', 'enhanced: [5.7.515.1]', /\(microsoft-authentication-level\)\.enhanced\[0\]: must look like 5\.7\.26/],
      ['text: same Message-ID', 'text: same (Message-ID', /\(gmail-same-message-id\)\.text: Invalid regular expression/],
      ['provider: bt\n', 'provider: british-telecom\n', /\(bt-looks-like-spam\)\.provider: "british-telecom" is not listed/],
      ['id: gmail-tls\n', 'id: gmail-tls-deferred\n', /duplicate id "gmail-tls-deferred"/],
      // Without its enhanced code, Gmail's row (earlier in the file) would take Yahoo's reply.
      ['    code: [450]\n    enhanced: [4.2.1]\n    text: receiving', '    code: [450]\n    text: receiving', /\(yahoo-recipient-rate\)\.examples\[0\]: without an MX host classified by gmail-recipient-rate/],
      ['text: TLS required for RCPT domain', 'text: TLS required for RCPT domains', /\(gmail-tls-required-rcpt\)\.examples\[0\]: classified by policy-deferred behind MX google\.com, not by its own rule/],
      ['reply: 450 User is receiving mail too quickly', 'reply: 450 User is receiving mail too quickly\n      - at: rcpt\n        reply: "250-not a reply"', /\(yahoo-recipient-rate\)\.examples\[1\]: not an SMTP reply/],
      ['  - id: other\n    category: other', '  - id: other\n    text: x\n    category: other', /no rule without code, enhanced and text for permanent replies/],
      ['  - id: other-deferred\n', '  - id: other-deferred\n    provider: bt\n', /catch-all rule cannot belong to a provider/],
      ['    listing: true\n    provider: yahoo\n', '    listing: yes\n    provider: yahoo\n', /rules\[\d+\] \(yahoo-spamhaus\)\.listing: Invalid input: expected boolean, received string/],
    ];
    for (const [from, to, expected] of cases) assert.throws(broken(from, to), (err: Error) => err instanceof PlaybookError && expected.test(err.message), `${to}: ${expected}`);
  });

  it("refuses an admin's row whose listing is not true or false, naming the file, the row and the field", () => {
    for (const [value, received] of [
      ['"true"', 'string'],
      ['1', 'number'],
      ['[true]', 'array'],
    ]) {
      const rows = ADMIN_ROWS.replace('    listing: false\n', `    listing: ${value}\n`);
      assert.notEqual(rows, ADMIN_ROWS);
      withAdminFile(rows, (file) =>
        assert.throws(
          () => Playbook.load(providers, file),
          (err: Error) => err instanceof PlaybookError && err.message === `${file}: rules[1] (blocklist).listing: Invalid input: expected boolean, received ${received}`,
          value,
        ),
      );
    }
  });

  it('refuses a rule after a catch-all that can never be reached, and YAML that does not parse', () => {
    const unreachable = `${TABLE}\n  - id: too-late\n    enhanced: [5.1.1]\n    category: recipient\n    permanence: permanent\n    remediation: never\n    examples: [{ at: rcpt, reply: 550 5.1.1 no }]\n`;
    assert.throws(() => Playbook.parse(unreachable, providers), /\(too-late\): never reached, rule other before it matches every permanent reply/);
    assert.throws(() => Playbook.parse('rules: [unclosed', providers), (err: Error) => err instanceof PlaybookError && /not valid YAML/.test(err.message));
  });
});
