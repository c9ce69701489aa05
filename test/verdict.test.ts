import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { outcomeOf, type Outcome } from '../src/smtp/index.ts';
import { toReport, verdict, type Fate, type Notification, type RecipientResult } from '../src/proxy/verdict.ts';

const reply = (line: string): Outcome => {
  const [, code, enhanced, text] = /^(\d{3}) (\d\.\d+\.\d+) (.*)$/.exec(line)!;
  return outcomeOf({ code: Number(code), enhanced, lines: [text] }, `DATA refused: ${line}`);
};
const at = (address: string, line: string): RecipientResult => ({ address, outcome: reply(line), remoteMta: `mx.${address.split('@')[1]} [127.0.0.9]` });

const OK = '250 2.0.0 OK';
const FULL = '552 5.2.2 mailbox full';
const LATER = '451 4.7.650 rate limited';

interface Row {
  name: string;
  results: RecipientResult[];
  remembered?: number;
  sender?: string;
  notification: Notification;
  /** Whom the relay must report to the sender before answering. */
  reports: string[];
  reply: RegExp;
  fates: Record<string, Fate>;
  remember: Record<string, 'delivered' | 'bounced'>;
}

/** DESIGN §1, "One reply for many destinations", row by row. */
const rows: Row[] = [
  { name: 'all 2xx: 250, everyone remembered as delivered', results: [at('b@gmail.test', OK), at('c@outlook.test', OK)], notification: 'none', reports: [], reply: /^250 2\.0\.0 message accepted by every destination$/, fates: { 'b@gmail.test': 'delivered', 'c@outlook.test': 'delivered' }, remember: { 'b@gmail.test': 'delivered', 'c@outlook.test': 'delivered' } },
  { name: 'all 5xx: that 5xx, no notification, nothing remembered', results: [at('b@gmail.test', FULL), at('c@outlook.test', '550 5.7.1 no')], notification: 'none', reports: [], reply: /^552 5\.2\.2 mailbox full$/, fates: { 'b@gmail.test': 'refused', 'c@outlook.test': 'refused' }, remember: {} },
  { name: 'all 4xx: that 4xx, nothing remembered', results: [at('b@gmail.test', LATER), at('c@outlook.test', '421 4.3.2 closing')], notification: 'none', reports: [], reply: /^451 4\.7\.650 rate limited$/, fates: { 'b@gmail.test': 'deferred', 'c@outlook.test': 'deferred' }, remember: {} },
  { name: '2xx and 5xx, notification sent: 250, the refused one bounced', results: [at('b@gmail.test', OK), at('c@outlook.test', FULL)], notification: 'sent', reports: ['c@outlook.test'], reply: /^250 2\.0\.0 message accepted by every destination; 1 refused, reported to the sender$/, fates: { 'b@gmail.test': 'delivered', 'c@outlook.test': 'bounced' }, remember: { 'b@gmail.test': 'delivered', 'c@outlook.test': 'bounced' } },
  { name: '2xx and 5xx, notification failed: 451, the refused one deferred and not remembered', results: [at('b@gmail.test', OK), at('c@outlook.test', FULL)], notification: 'failed', reports: ['c@outlook.test'], reply: /^451 4\.3\.0 message reached 1 of 2 recipients; send it again and only the missing ones will get it; <c@outlook\.test>: 451 4\.3\.0 refused by mx\.outlook\.test \[127\.0\.0\.9\] and the status notification could not be sent$/, fates: { 'b@gmail.test': 'delivered', 'c@outlook.test': 'deferred' }, remember: { 'b@gmail.test': 'delivered' } },
  { name: '2xx and 5xx from a null sender: 250, nobody to notify', results: [at('b@gmail.test', OK), at('c@outlook.test', FULL)], sender: '', notification: 'none', reports: [], reply: /^250 2\.0\.0 message accepted by every destination; 1 refused \(null sender: nobody to notify\)$/, fates: { 'b@gmail.test': 'delivered', 'c@outlook.test': 'bounced' }, remember: { 'b@gmail.test': 'delivered', 'c@outlook.test': 'bounced' } },
  { name: '2xx and 4xx: 451 with the 4xx enhanced code, the delivered one remembered', results: [at('b@gmail.test', OK), at('c@outlook.test', LATER)], notification: 'none', reports: [], reply: /^451 4\.7\.650 message reached 1 of 2 recipients; send it again and only the missing ones will get it; <c@outlook\.test>: 451 4\.7\.650 rate limited$/, fates: { 'b@gmail.test': 'delivered', 'c@outlook.test': 'deferred' }, remember: { 'b@gmail.test': 'delivered' } },
  { name: '4xx and 5xx, notification sent: 451, the refused one bounced and remembered', results: [at('b@gmail.test', LATER), at('c@outlook.test', FULL)], notification: 'sent', reports: ['c@outlook.test'], reply: /^451 4\.7\.650 message reached 1 of 2 recipients;/, fates: { 'b@gmail.test': 'deferred', 'c@outlook.test': 'bounced' }, remember: { 'c@outlook.test': 'bounced' } },
  { name: 'memo hit and 2xx: 250', results: [at('c@outlook.test', OK)], remembered: 1, notification: 'none', reports: [], reply: /^250 2\.0\.0 message accepted by every destination$/, fates: { 'c@outlook.test': 'delivered' }, remember: { 'c@outlook.test': 'delivered' } },
  { name: 'memo hit and 4xx: 451 counting the remembered one as reached', results: [at('c@outlook.test', LATER)], remembered: 1, notification: 'none', reports: [], reply: /^451 4\.7\.650 message reached 1 of 2 recipients;/, fates: { 'c@outlook.test': 'deferred' }, remember: {} },
  { name: 'memo hit and 5xx: not "same class everywhere", the refusal is reported', results: [at('c@outlook.test', FULL)], remembered: 1, notification: 'sent', reports: ['c@outlook.test'], reply: /^250 2\.0\.0 message accepted by every destination; 1 refused, reported to the sender$/, fates: { 'c@outlook.test': 'bounced' }, remember: { 'c@outlook.test': 'bounced' } },
  { name: 'everyone served from the memo: 250 and nothing new', results: [], remembered: 2, notification: 'none', reports: [], reply: /^250 2\.0\.0 message accepted by every destination$/, fates: {}, remember: {} },
];

describe('one reply for many destinations (DESIGN §1)', () => {
  for (const row of rows) {
    it(row.name, () => {
      const sender = row.sender ?? 'alice@example.test';
      assert.deepEqual(
        toReport(row.results, row.remembered ?? 0, sender).map((r) => r.address),
        row.reports,
      );
      const result = verdict(row.results, row.remembered ?? 0, sender, row.notification);
      const { code, enhanced, lines } = result.outcome.reply;
      assert.match(`${code} ${enhanced} ${lines.join(' ')}`, row.reply);
      assert.equal(result.outcome.kind, code < 300 ? 'accepted' : code < 500 ? 'temporary' : 'permanent');
      assert.deepEqual(Object.fromEntries(result.fates.map((f) => [f.address, f.fate])), row.fates);
      assert.deepEqual(Object.fromEntries(result.remember.map((r) => [r.address, r.state])), row.remember);
    });
  }

  it('reports the destination’s own reply as given, not the relay’s prefixed one', () => {
    const said = { reply: { code: 552, enhanced: '5.2.2', lines: ['mailbox full'] }, mxHost: 'mx.outlook.test' };
    const results: RecipientResult[] = [
      at('b@gmail.test', OK),
      { address: 'c@outlook.test', outcome: outcomeOf({ code: 552, enhanced: '5.2.2', lines: ['mx.outlook.test said: mailbox full (relay id x)'] }, 'DATA refused', said), remoteMta: 'mx.outlook.test [127.0.0.11]' },
    ];
    assert.deepEqual(toReport(results, 0, 'alice@example.test')[0].reply, said.reply);
  });
});
