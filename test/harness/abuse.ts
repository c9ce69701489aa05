// What the abuse guard's tests (test/abuse-hold, test/abuse-guard-edges) send and read: a
// transaction as an internal server sends it, the replies of a hold and of a limit, and the
// `hygiene-relay abuse` commands.
import assert from 'node:assert/strict';
import { RawClient, type ClientReply } from './client.ts';
import { runCli } from './process.ts';
import type { Sent } from './send.ts';
import { message } from './world.ts';

/** The password of every AUTH user of these tests. */
export const PASSWORD = 'correct horse';

/** AUTH PLAIN as `user` with PASSWORD. */
export const plain = (user: string) => `AUTH PLAIN ${Buffer.from(`\0${user}\0${PASSWORD}`).toString('base64')}`;
/** `text` matched literally in a RegExp. */
export const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** A time as the relay writes it in its replies and `abuse list`: ISO 8601 to the second, UTC. */
export const ISO = '\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ';

/** The 550 a held sender's recipients get; group 1 is the time the hold began. */
export const heldReply = (named: string, why: string) =>
  new RegExp(`^5\\.7\\.1 ${escape(named)} is held by the relay's abuse guard since (${ISO}) \\(${escape(why)}\\); ask the mail administrator to release it$`);

/** The 451 of a key over its limit (not held). */
export const limitedReply = (named: string, limit: string) => new RegExp(`^4\\.7\\.1 ${escape(named)} is over its limit of ${escape(limit)}; try again after ${ISO} \\(in \\d+ s\\)$`);

/**
 * One transaction on its own connection, as an internal server sends: AUTH as `user` when
 * given, MAIL FROM `from` (with SMTPUTF8 when asked), each RCPT, and the message when a
 * recipient was accepted (RSET otherwise).
 */
export async function sendMail(port: number, from: string, to: string[], options: { user?: string; smtputf8?: boolean } = {}): Promise<Sent> {
  const { client } = await RawClient.connect(port);
  try {
    await client.command('EHLO corp-ex01.example.test');
    if (options.user !== undefined) assert.equal((await client.command(plain(options.user))).code, 235);
    const mail = await client.command(`MAIL FROM:<${from}>${options.smtputf8 ? ' SMTPUTF8' : ''}`);
    assert.equal(mail.code, 250, mail.text);
    const rcpts: ClientReply[] = [];
    for (const recipient of to) rcpts.push(await client.command(`RCPT TO:<${recipient}>`));
    const accepted = to.filter((_, i) => rcpts[i].code === 250);
    if (!accepted.length) {
      assert.equal((await client.command('RSET')).code, 250);
      return { mail, rcpts };
    }
    // One To address: a hundred on one line would break RFC 5322's line length. UTF-8 as it is (SMTPUTF8).
    const { final } = await client.data(Buffer.from(message({ from, to: accepted[0] }), 'utf8'));
    return { mail, rcpts, data: final };
  } finally {
    await client.quit();
  }
}

/** A message to one recipient that must go: accepted and answered 250 after DATA. */
export async function delivered(port: number, from: string, to: string, user?: string): Promise<void> {
  const sent = await sendMail(port, from, [to], { user });
  assert.deepEqual([sent.rcpts[0].code, sent.data?.code], [250, 250], JSON.stringify(sent));
}

/** Every RCPT of a transaction refused as held; the time the hold began. */
export function assertHeld(sent: Sent, named: string, why: string): string {
  assert.equal(sent.data, undefined, 'no DATA: nothing was accepted');
  const since = new Set<string>();
  for (const rcpt of sent.rcpts) {
    assert.equal(rcpt.code, 550, JSON.stringify(rcpt));
    const match = heldReply(named, why).exec(rcpt.text);
    assert.ok(match, rcpt.text);
    since.add(match[1]);
  }
  assert.equal(since.size, 1, 'every refusal names the same hold');
  return [...since][0];
}

/** `hygiene-relay abuse …`. */
export const cli = (...args: string[]) => runCli(['abuse', ...args]);

/** `abuse list` against `file`: exit 0, nothing on stderr, stdout as it printed it. */
export async function list(file: string): Promise<string> {
  const result = await cli('list', '--config', file);
  assert.equal(result.stderr, '');
  assert.equal(result.code, 0);
  return result.stdout;
}

export async function release(file: string, who: string): Promise<string> {
  const result = await cli('release', who, '--config', file);
  assert.equal(result.stderr, '');
  assert.equal(result.code, 0);
  return result.stdout;
}

export type OverRecord = { counted: string; who: string; unit: string; window: string; limit: number; count: number };
export const overOf = (record: Record<string, unknown>) => (record.over as OverRecord[]).map((o) => [o.counted, o.who, o.unit, o.window, o.limit, o.count]);
