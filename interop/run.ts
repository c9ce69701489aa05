/**
 * `npm run interop`: the relay with real internal servers (Postfix and Exim from Debian's
 * packages, stock transport settings, the relay as their smarthost) against the test
 * harness's simulated internet. See docs/interop.md.
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { makeKey } from '../test/harness/dkim.ts';
import type { DestinationScript } from '../test/harness/destination.ts';
import { send } from '../test/harness/send.ts';
import { freePort, message, World } from '../test/harness/world.ts';
import { until, within } from './exec.ts';
import { startExim, startPostfix, type InternalServer, type LogEvent } from './servers.ts';

/** Where install.sh unpacks exim4-daemon-light; kept between runs like an installed package. */
const EXIM_ROOT = '/var/cache/hygiene-relay-interop/exim4-daemon-light';
const INSTALL_TIMEOUT = 15 * 60_000;
/** The whole run after the install; each wait has its own bound too, this one catches the rest. */
const RUN_TIMEOUT = 10 * 60_000;
/** One delivery attempt of one message, from submission or forced retry to its log lines. */
const ATTEMPT_TIMEOUT = 30_000;
/** The first attempt and two forced retries: enough to show a reply the server never gets. */
const MAX_ATTEMPTS = 3;
/** Where the relay listens: not 127.0.0.1, which Exim would take for itself and refuse to route to. */
const RELAY_HOST = '127.0.0.3';
/**
 * Where the test submits from. Postfix adds a missing Message-ID and Date only for clients
 * it counts as local (local_header_rewrite_clients: permit_inet_interfaces), so a client
 * on another loopback address is relayed as it is, like mail from another host.
 */
const SUBMITTER = '127.0.0.5';
const SENDER = 'alice@example.test';
const SCRIPTED_DEFERRAL = '4.3.0 interop: scripted deferral at DATA';
const SCRIPTED_REFUSAL = '5.1.1 interop: scripted refusal, no such user';

interface Scenario {
  id: string;
  title: string;
  to: string[];
  /** Refused at RCPT by its destination: no copy, one bounce from the internal server to the sender. */
  refused: string[];
  /** Their destination answers 451 at DATA to the first message for them. */
  deferOnce: string[];
  messageId: boolean;
}

function scenarios(tag: string): Scenario[] {
  const pair = (id: string): string[] => [`bob.${tag}.${id}@gmail.test`, `carol.${tag}.${id}@outlook.test`];
  return [
    { id: 'a', title: 'two recipients at two destinations', to: pair('a'), refused: [], deferOnce: [], messageId: true },
    { id: 'b', title: 'one destination 451 at DATA once, retry completes', to: pair('b'), refused: [], deferOnce: [pair('b')[0]], messageId: true },
    {
      id: 'c',
      title: 'one recipient refused at RCPT (550 5.1.1)',
      to: [`bob.${tag}.c@gmail.test`, `nobody.${tag}.c@outlook.test`],
      refused: [`nobody.${tag}.c@outlook.test`],
      deferOnce: [],
      messageId: true,
    },
    // Without the 451 a server that gets its 250 never retries, and the memo would not be
    // tested for a message without Message-ID.
    { id: 'd', title: 'no Message-ID, one destination 451 once, retry', to: pair('d'), refused: [], deferOnce: [pair('d')[0]], messageId: false },
  ];
}

interface Result {
  server: string;
  scenario: Scenario;
  problems: string[];
  notes: string[];
  /** The internal server's log lines about the message, shown when it failed. */
  evidence: string[];
}

const deferOnce = new Set<string>();
const refused = new Set<string>();
const script: DestinationScript = {
  rcptTo: (address) => (refused.has(address) ? { code: 550, message: SCRIPTED_REFUSAL } : undefined),
  data: (_message, envelope) => (envelope.rcptTo.some((r) => deferOnce.delete(r)) ? { code: 451, message: SCRIPTED_DEFERRAL } : undefined),
};

function clip(text: string, max = 240): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

async function runScenario(world: World, server: InternalServer, scenario: Scenario): Promise<Result> {
  const result: Result = { server: server.name, scenario, problems: [], notes: [], evidence: [] };
  const eventsBefore = server.events().length;
  const receivedBefore = new Map([...world.hosts.values()].map((host) => [host, host.received.length]));
  for (const r of scenario.deferOnce) deferOnce.add(r);
  for (const r of scenario.refused) refused.add(r);
  let queueId: string | undefined;
  try {
    let raw = message({ to: scenario.to.join(', '), subject: `interop ${server.name} ${scenario.id}`, messageId: `${scenario.id}.${server.name}.${Date.now()}@example.test` });
    if (!scenario.messageId) raw = raw.replace(/^Message-ID:[^\r\n]*\r\n/m, '');
    const sent = await within(`${server.name} to take the message`, ATTEMPT_TIMEOUT, send(server.port, SENDER, scenario.to, raw, { localAddress: SUBMITTER }));
    if (sent.data?.code !== 250) throw new Error(`${server.name} did not take the message: ${JSON.stringify(sent)}`);
    queueId = server.queueIdOf(sent.data.text);
    if (!queueId) throw new Error(`no queue id in ${server.name}'s reply "${sent.data.text}"`);
    const id = queueId;
    const ofMessage = (r: string): LogEvent[] => server.events().filter((e) => e.queueId === id && e.recipient === r);

    let pending = [...scenario.to];
    let attempts = 0;
    while (pending.length && attempts < MAX_ATTEMPTS) {
      // The first attempt may have been logged already (Exim delivers as soon as it has the
      // message); each retry is what the log gains after it is forced.
      const seen = new Map(pending.map((r) => [r, attempts === 0 ? 0 : ofMessage(r).length]));
      if (attempts > 0) await server.retry(id);
      attempts += 1;
      const outcome = await until(`${server.name} to log attempt ${attempts} for ${pending.join(', ')}`, ATTEMPT_TIMEOUT, () => {
        const next = pending.map((r) => ofMessage(r)[seen.get(r)!]);
        return next.every(Boolean) && next;
      });
      result.notes.push(`attempt ${attempts}: ${outcome.map((e) => `${e.recipient.split('@')[0]} ${e.status}`).join(', ')}`);
      pending = pending.filter((_, i) => outcome[i].status === 'deferred');
    }
    if (pending.length) result.problems.push(`still deferred after ${attempts} attempts: ${pending.join(', ')}`);

    try {
      await until(`${server.name}'s queue to empty`, ATTEMPT_TIMEOUT, async () => (await server.queued()) === 0);
    } catch {
      result.problems.push(`${await server.queued()} message(s) left in ${server.name}'s queue`);
    }
  } catch (err) {
    result.problems.push((err as Error).message);
  }

  const events = server.events().slice(eventsBefore);
  for (const deferral of events.filter((e) => e.status === 'deferred')) {
    if (!deferral.text.includes(SCRIPTED_DEFERRAL.slice(6))) result.problems.push(`deferral not scripted: ${deferral.recipient}: ${clip(deferral.text)}`);
  }
  if (scenario.deferOnce.length && !events.some((e) => e.status === 'deferred' && e.text.includes(SCRIPTED_DEFERRAL.slice(6)))) {
    result.problems.push(`the scripted 451 at DATA never reached ${server.name}`);
  }

  const copies = (r: string) =>
    [...world.hosts.values()].flatMap((host) => host.received.slice(receivedBefore.get(host)).filter((m) => m.envelope.rcptTo.includes(r)));
  for (const r of scenario.to) {
    const expected = scenario.refused.includes(r) ? 0 : 1;
    const got = copies(r);
    if (got.length !== expected) result.problems.push(`${r}: ${got.length} copies at its destination, expected ${expected}`);
    for (const copy of got) {
      const messageId = /^Message-ID:\s*(.*)$/im.exec(copy.message.toString('latin1').split('\r\n\r\n')[0])?.[1];
      if (!scenario.messageId && messageId?.includes(`@${server.hostname}`)) {
        result.problems.push(`${server.name} added a Message-ID (${messageId}): the message did not reach the relay without one`);
      }
    }
  }
  result.notes.push(`copies: ${scenario.to.map((r) => `${r.split('@')[0]} ${copies(r).length}`).join(', ')}`);
  if (!scenario.messageId) {
    const ids = new Set(scenario.to.flatMap((r) => copies(r).map((m) => /^Message-ID:\s*(.*)$/im.exec(m.message.toString('latin1'))?.[1] ?? 'none')));
    result.notes.push(`Message-ID as delivered: ${[...ids].join(', ')}`);
  }
  for (const r of scenario.refused) {
    if (!events.some((e) => e.recipient === r && e.status === 'bounced' && e.text.includes('5.1.1'))) result.problems.push(`${server.name} logged no bounce of ${r} with the destination's 5.1.1`);
    const notices = world
      .destination('example.test')
      .received.slice(receivedBefore.get(world.destination('example.test')))
      .filter((m) => m.envelope.rcptTo.includes(SENDER) && m.message.toString('latin1').includes(r));
    if (notices.length !== 1) result.problems.push(`${SENDER} got ${notices.length} status notifications about ${r}, expected 1 (from ${server.name})`);
    else result.notes.push(`${SENDER} got ${server.name}'s bounce for ${r.split('@')[0]}`);
  }

  for (const r of [...scenario.deferOnce, ...scenario.refused]) {
    deferOnce.delete(r);
    refused.delete(r);
  }
  if (result.problems.length) {
    const id = queueId;
    if (id) result.evidence = server.log().split('\n').filter((line) => line.includes(id));
    // Whatever this scenario left queued must not be retried during the next one.
    await server.purge().catch((err: Error) => result.problems.push(`purging the queue: ${err.message}`));
  }
  return result;
}

function install(): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [path.join(import.meta.dirname, 'install.sh'), EXIM_ROOT], { stdio: ['ignore', 'inherit', 'inherit'] });
    const timer = setTimeout(() => child.kill('SIGKILL'), INSTALL_TIMEOUT);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`interop/install.sh failed (${signal ?? `exit ${code}`})`));
    });
  });
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

async function main(): Promise<number> {
  const started = Date.now();
  const say = (line = ''): void => void process.stdout.write(`${line}\n`);
  say('hygiene-relay interop: Postfix and Exim as the internal server, the relay as their smarthost');
  await install();
  const installed = Date.now();

  const scratch = mkdtempSync(path.join(tmpdir(), 'hygiene-relay-interop-'));
  // The servers drop root (postfix, Debian-exim) and must reach their directories in it.
  chmodSync(scratch, 0o755);
  const cleanups: (() => Promise<unknown>)[] = [async () => rmSync(scratch, { recursive: true, force: true })];
  let cleaned: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaned ??= (async () => {
      for (const step of cleanups.reverse()) await step().catch((err: Error) => process.stderr.write(`cleanup: ${err.message}\n`));
    })());
  const interrupted = (signal: NodeJS.Signals): void => {
    process.stderr.write(`interop: ${signal === 'SIGALRM' ? `not done after ${seconds(RUN_TIMEOUT)}` : signal}, cleaning up\n`);
    void cleanup().then(() => process.exit(1));
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  const watchdog = setTimeout(() => interrupted('SIGALRM'), RUN_TIMEOUT);

  const results: Result[] = [];
  const versions: string[] = [];
  try {
    const world = await World.start({
      config: (internet) => {
        // A DKIM key and DMARC p=reject for the sending organisation, as in the demo; its
        // subdomains too, so that the servers' bounces (From MAILER-DAEMON@host) pass.
        const key = makeKey(scratch, 'example.test', 's2026', 'rsa', { dns: internet.dns });
        internet.dns.add('_dmarc.example.test', { type: 'TXT', data: 'v=DMARC1; p=reject' });
        return {
          listeners: [{ host: RELAY_HOST, port: 0 }],
          clients: { networks: ['127.0.0.0/8'] },
          domains: { 'example.test': { subdomains: true, dkim: [{ selector: 's2026', key: key.file }] } },
        };
      },
    });
    cleanups.push(() => world.close());
    for (const host of world.hosts.values()) host.script = script;
    const relay = { host: RELAY_HOST, port: world.port };
    say(`relay ${relay.host}:${relay.port} (in-process), destinations ${[...world.hosts.values()].map((h) => `${h.name} ${h.host}`).join(', ')}`);

    const servers: [string, (dir: string, port: number) => Promise<InternalServer>][] = [
      ['Postfix', (dir, port) => startPostfix(dir, port, relay)],
      ['Exim', (dir, port) => startExim(EXIM_ROOT, dir, port, relay)],
    ];
    for (const [name, start] of servers) {
      const dir = path.join(scratch, name.toLowerCase());
      mkdirSync(dir);
      let server: InternalServer;
      try {
        server = await start(dir, await freePort());
      } catch (err) {
        say(`${name} did not start: ${(err as Error).message}`);
        for (const scenario of scenarios(name.toLowerCase())) results.push({ server: name, scenario, problems: [`not run: ${name} did not start`], notes: [], evidence: [] });
        continue;
      }
      cleanups.push(() => server.stop());
      versions.push(`${name} ${server.version}, listening on 127.0.0.1:${server.port}`);
      say(`${name} ${server.version}`);
      for (const scenario of scenarios(name.toLowerCase())) {
        const result = await runScenario(world, server, scenario);
        results.push(result);
        say(`  ${result.problems.length ? 'FAIL' : 'PASS'}  ${scenario.id}  ${scenario.title}`);
      }
      await server.stop();
    }
  } finally {
    clearTimeout(watchdog);
    await cleanup();
  }

  const ended = Date.now();
  const failed = results.filter((r) => r.problems.length);
  say();
  say('Summary');
  for (const version of versions) say(`  ${version}`);
  for (const r of results) {
    say(`  ${r.problems.length ? 'FAIL' : 'PASS'}  ${r.server.padEnd(8)} ${r.scenario.id}  ${r.scenario.title}`);
    for (const note of r.notes) say(`          ${note}`);
    for (const problem of r.problems) say(`        ✗ ${problem}`);
    if (r.problems.length && r.evidence.length) {
      say(`        ${r.server}'s log for the message:`);
      for (const line of r.evidence) say(`          | ${clip(line, 400)}`);
    }
  }
  say();
  say(`elapsed ${seconds(ended - started)} (system packages ${seconds(installed - started)}, scenarios ${seconds(ended - installed)})`);
  say(`${results.length - failed.length} passed, ${failed.length} failed`);
  return failed.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`interop: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  },
);
