import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { hashPassword } from '../src/inbound/index.ts';
import { createLogger } from '../src/observability/index.ts';
import { RawClient } from './harness/client.ts';
import { makeKey } from './harness/dkim.ts';
import { RelayProcess, runCli } from './harness/process.ts';
import { send } from './harness/send.ts';
import { freePort, GMAIL, Internet, message, World } from './harness/world.ts';

const BIN = path.resolve(import.meta.dirname, '../bin/hygiene-relay.ts');
/** Records written by the relay before issue 12 kept each destination's replies beside the client's (`rcpt`, `data`). */
const OLD_RECORDS = path.resolve(import.meta.dirname, 'fixtures/records-before-issue-12.jsonl');

type Rec = Record<string, unknown>;

/** "250 2.0.0" of "250 2.0.0 message accepted …": the codes the line shows. */
const codes = (reply: unknown) => String(reply).split(' ').slice(0, 2).join(' ');

describe('hygiene-relay logs, on records the relay wrote', () => {
  let dir: string;
  let world: World;
  let file: string;
  let records: Rec[];
  let transactions: Rec[];
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-logs-'));
    const password = await hashPassword('correct horse');
    world = await World.start({
      destinations: [
        { ...GMAIL, script: { rcptTo: (address) => (address.startsWith('nobody@') ? { code: 550, message: '5.1.1 no such user' } : undefined) } },
        { domain: 'outlook.test', mx: [{ name: 'mx.outlook.test', ip: '127.0.0.11' }], script: { data: () => ({ code: 451, message: '4.7.0 try again later' }) } },
      ],
      config: (internet) => {
        const key = makeKey(dir, 'example.test', 's1', 'rsa', { dns: internet.dns });
        internet.dns.add('_dmarc.example.test', { type: 'TXT', data: 'v=DMARC1; p=reject' });
        return {
          listeners: [{ host: '127.0.0.1', port: 0, allowInsecureAuth: true }],
          clients: { networks: ['127.0.0.1/32'], users: [{ name: 'mdaemon', password }] },
          domains: { 'example.test': { dkim: [{ selector: 's1', key: key.file }] } },
          abuse: { overrides: [{ user: 'mdaemon', perHour: 1 }] },
        };
      },
    });
    await send(world.port, 'alice@example.test', ['bob@gmail.test', 'nobody@gmail.test'], message({ to: 'bob@gmail.test' }));
    await send(world.port, 'carol@example.test', ['dave@outlook.test'], message({ from: 'carol@example.test', to: 'dave@outlook.test' }));
    const { client } = await RawClient.connect(world.port);
    await client.command('EHLO corp-mdaemon.example.test');
    assert.equal((await client.command(`AUTH PLAIN ${Buffer.from('\0mdaemon\0correct horse').toString('base64')}`)).code, 235);
    await client.command('MAIL FROM:<alice@example.test>');
    await client.command('RCPT TO:<erin@gmail.test>');
    await client.data(message({ to: 'erin@gmail.test' }));
    // Over its one recipient an hour: the abuse guard's record.
    await client.command('MAIL FROM:<alice@example.test>');
    assert.equal((await client.command('RCPT TO:<frank@gmail.test>')).code, 451);
    await client.quit();
    await world.logs.waitFor(() => world.logs.transactions().length === 3 && world.logs.records.some((r) => r.msg === 'abuse'));
    records = [...world.logs.records];
    transactions = records.filter((r) => r.msg === 'transaction');
    file = path.join(dir, 'relay.log');
    // The file as an admin has it: the relay's records, and a line something else wrote into it.
    writeFileSync(file, [...records.map((r) => JSON.stringify(r)), 'Dec  1 09:00:00 host kernel: not a record'].join('\n') + '\n');
  });
  after(async () => {
    await world.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** What each of the three transactions above must print, and the abuse record after them. */
  const expected = () => {
    const [first, second, third] = transactions;
    const abuse = records.find((r) => r.msg === 'abuse')!;
    return [
      `${first.time} ${first.id} 127.0.0.1 <alice@example.test> → <bob@gmail.test> delivered 250 2.6.0, <nobody@gmail.test> refused 550 5.1.1; dmarc=pass; reply ${codes(first.reply)}`,
      `${second.time} ${second.id} 127.0.0.1 <carol@example.test> → <dave@outlook.test> deferred 451 4.7.0; dmarc=pass; reply 451 4.7.0`,
      `${third.time} ${third.id} 127.0.0.1 user=mdaemon <alice@example.test> → <erin@gmail.test> delivered 250 2.6.0; dmarc=pass; reply ${codes(third.reply)}`,
      `${abuse.time} warn abuse component=abuse reason=limit user=mdaemon client=127.0.0.1 sender=alice@example.test over=${JSON.stringify(abuse.over)} action="every further recipient is answered 451 4.7.1 until the limit frees"`,
    ];
  };

  it('prints one line per transaction (client, sender, each recipient with its result and destination code, predicted DMARC, final reply) and per abuse record', async (t) => {
    assert.equal(transactions.length, 3);
    assert.match(String(transactions[0].reply), /^250 2\.\d\.\d /);
    const result = await runCli(['logs', file]);
    assert.equal(result.code, 0, result.stderr);
    t.diagnostic(result.stdout);
    assert.deepEqual(result.stdout.split('\n').filter(Boolean), expected());
    // The other records (keys loaded, listening, identity) are neither transactions nor abuse; the kernel line is not a record.
    assert.equal(result.stderr, 'hygiene-relay: skipped 1 line that is not a JSON record\n');
  });

  it('reads standard input with - or no file', async () => {
    const input = readFileSync(file, 'utf8');
    for (const args of [['logs', '-'], ['logs']]) {
      const result = await runCli(args, input);
      assert.equal(result.code, 0, result.stderr);
      assert.deepEqual(result.stdout.split('\n').filter(Boolean), expected(), args.join(' '));
    }
  });

  it('--grep keeps the transactions whose record contains the text anywhere', async () => {
    const byUser = await runCli(['logs', file, '--grep', 'mdaemon']);
    assert.deepEqual(byUser.stdout.split('\n').filter(Boolean), expected().slice(2));
    // A field the line does not show: the destination's own words.
    const byReplyText = await runCli(['logs', file, '--grep', 'try again later']);
    assert.deepEqual(byReplyText.stdout.split('\n').filter(Boolean), [expected()[1]]);
    const none = await runCli(['logs', file, '--grep', 'nobody-at-all']);
    assert.deepEqual([none.code, none.stdout], [0, '']);
  });

  it('--since keeps the transactions recorded in that last stretch of time', async () => {
    const aged = path.join(dir, 'aged.log');
    // The first transaction as if logged two hours ago.
    const twoHoursAgo = new Date(Date.now() - 2 * 3_600_000).toISOString();
    writeFileSync(aged, records.map((r) => JSON.stringify(r === transactions[0] ? { ...r, time: twoHoursAgo } : r)).join('\n') + '\n');
    const recent = await runCli(['logs', aged, '--since', '1h']);
    assert.deepEqual(recent.stdout.split('\n').filter(Boolean), expected().slice(1));
    const day = await runCli(['logs', aged, '--since', '1d']);
    assert.equal(day.stdout.split('\n').filter(Boolean).length, 4);
    assert.ok(day.stdout.startsWith(`${twoHoursAgo} ${transactions[0].id} `));
  });

  it('--id prints that transaction whole, every field indented', async () => {
    const [first] = transactions;
    const result = await runCli(['logs', file, '--id', String(first.id)]);
    assert.equal(result.code, 0, result.stderr);
    const [summary, ...rest] = result.stdout.split('\n');
    assert.equal(summary, expected()[0]);
    const body = rest.join('\n');
    assert.match(body, new RegExp(`^id: ${first.id}$`, 'm'));
    assert.match(body, /^envelope:\n {2}mailFrom: alice@example\.test\n {2}rcptTo:\n {4}- bob@gmail\.test\n {4}- nobody@gmail\.test$/m);
    assert.match(body, /^ {4}dmarc:\n {6}result: pass$/m);
    // The playbook's advice on the refused recipient, whole and on one line.
    const refused = (first.recipients as Rec[]).find((r) => r.address === 'nobody@gmail.test')!;
    assert.ok(body.includes(`remediation: "${String(refused.remediation)}"`), body);
    assert.ok(body.includes(`sha256: ${String(first.sha256)}`));

    const missing = await runCli(['logs', file, '--id', 'no-such-id']);
    assert.deepEqual([missing.code, missing.stdout, missing.stderr.split('\n').filter(Boolean).at(-1)], [1, '', 'hygiene-relay: no transaction with relay id no-such-id']);
  });

  it('--follow prints the transactions appended to the file, until interrupted', { timeout: 20_000 }, async () => {
    const growing = path.join(dir, 'growing.log');
    writeFileSync(growing, `${JSON.stringify(transactions[0])}\n`);
    const child = spawn(process.execPath, [BIN, 'logs', '--follow', growing], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let stdout = '';
    const waiters: (() => void)[] = [];
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      waiters.splice(0).forEach((w) => w());
    });
    const lineCount = async (n: number) => {
      while (stdout.split('\n').filter(Boolean).length < n) await new Promise<void>((resolve) => waiters.push(resolve));
    };
    await lineCount(1);
    // A record written in two parts, as a slow writer would: one line once its line end arrives.
    const next = JSON.stringify(transactions[1]);
    appendFileSync(growing, next.slice(0, 100));
    appendFileSync(growing, `${next.slice(100)}\n${JSON.stringify(transactions[2])}\n`);
    await lineCount(3);
    // Truncated in place, as logrotate's copytruncate does: read again from the start.
    writeFileSync(growing, `${JSON.stringify(transactions[0])}\n`);
    await lineCount(4);
    child.kill('SIGINT');
    assert.equal(await exited, 0);
    assert.deepEqual(stdout.split('\n').filter(Boolean), [...expected().slice(0, 3), expected()[0]]);
  });

  it('fails in one line, exit 2, on a missing file or a --since that is no duration', async () => {
    const missing = await runCli(['logs', path.join(dir, 'absent.log')]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /^hygiene-relay: cannot read .*absent\.log: ENOENT[^\n]*\n$/);
    const since = await runCli(['logs', file, '--since', 'yesterday']);
    assert.equal(since.code, 2);
    assert.match(since.stderr, /^hygiene-relay: --since must be a duration such as 30m, 1h or 2d, not "yesterday"[^\n]*\n$/);
  });
});

describe('hygiene-relay logs, on records written before the client and destination replies were apart', () => {
  it('shows each destination reply code from the recipient\'s own rcpt and data', async () => {
    const [record] = readFileSync(OLD_RECORDS, 'utf8').split('\n').filter(Boolean).map((line) => JSON.parse(line) as Rec).filter((r) => r.msg === 'transaction');
    const result = await runCli(['logs', OLD_RECORDS]);
    assert.equal(result.code, 0, result.stderr);
    assert.deepEqual(result.stdout.split('\n').filter(Boolean), [
      `${record.time} ${record.id} 127.0.0.1 <alice@example.test> → <bob@gmail.test> delivered 250 2.6.0, <nobody@gmail.test> refused 550 5.1.1; dmarc=none; reply 250 2.0.0`,
    ]);
  });
});

describe('log.format: line, from the relay process', () => {
  let dir: string;
  let internet: Internet;
  let relay: RelayProcess;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-line-'));
    internet = await Internet.start({ destinations: [GMAIL] });
    relay = await RelayProcess.start(
      path.join(dir, 'relay.yaml'),
      internet.relayConfig({ listeners: [{ host: '127.0.0.1', port: await freePort() }], log: { level: 'info', format: 'line' } }),
      { text: true },
    );
  });
  after(async () => {
    await relay.stop();
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('writes one line per record, a transaction as its summary', async () => {
    const started = await relay.waitForLine((line) => line.includes('relay started'));
    assert.match(started, new RegExp(`^\\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z info relay started ports=\\[${relay.port}\\] httpPort=\\d+ config=\\S+relay\\.yaml$`));
    const sent = await send(relay.port, 'alice@example.test', ['bob@gmail.test'], message());
    assert.equal(sent.data?.code, 250);
    const id = /\(relay id (\S+)\)/.exec(sent.data!.text)![1];
    const line = await relay.waitForLine((l) => l.includes(` ${id} `));
    // No DKIM key and no DMARC record here: SPF alone passes, DMARC predicts none.
    assert.match(line, new RegExp(`^\\S+Z ${id} 127\\.0\\.0\\.1 <alice@example\\.test> → <bob@gmail\\.test> delivered 250 2\\.6\\.0; dmarc=none; reply 250 2\\.\\d\\.\\d$`));
    assert.ok(relay.lines.every((l) => !l.startsWith('{')), 'no JSON line');
  });
});

describe('log.format: pretty', () => {
  it('writes pino-pretty\'s multi-line view with the recorded ISO time', () => {
    let text = '';
    const out = new Writable({ write: (chunk: Buffer, _encoding, callback) => ((text += chunk), callback()) });
    createLogger('info', out, 'pretty').info({ ports: [2525], config: '/etc/hygiene-relay/relay.yaml' }, 'relay started');
    assert.match(text, /^\[\d{4}-\d\d-\d\dT[\d:.]+Z\] INFO: relay started\n {4}ports: \[\n {6}2525\n {4}\]\n {4}config: "\/etc\/hygiene-relay\/relay\.yaml"\n$/);
  });
});
