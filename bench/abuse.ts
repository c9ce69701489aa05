import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { run, stop, until } from '../interop/exec.ts';
import { freePort } from '../test/harness/world.ts';
import { median } from './bench.ts';
import { cpuSeconds, machineBusySeconds } from './proc.ts';
import { fmt, table, writeSection } from './sections.ts';
import { RECIPIENT, SENDER, Sink, startDns, startRelay, type System } from './systems.ts';

/**
 * `npm run bench:abuse [-- options]`: what the outbound abuse guard (src/abuse/) costs. The
 * same relay (RSA-2048, preflight on, one worker) runs with the guard off, as `npm run bench`
 * has it, and on: every window of abuse.limits and abuse.addressLimits counting (recipients
 * and messages, per minute, hour and day, for the client address and the envelope sender)
 * with limits no run reaches, abuse.anomaly at its defaults (each recipient is written to the
 * sender's ten-minute history), abuse.hold false; once with the state file (memo.path,
 * SQLite) and once with `limits.redis`, a redis-server this command starts on a free port.
 * One sender, smtp-source with --recipients per message over --sessions reused sessions;
 * rounds alternate between the relays (a different one first each round) and ratios to the
 * guard-off relay are taken within a round. Prints the table and rewrites the "## Abuse guard
 * cost" section of bench/RESULTS.md.
 *   --rounds N       alternating rounds (6: with three relays, each goes first twice)
 *   --messages N     messages per round and relay (3000)
 *   --recipients N   recipients per message (3)
 *   --sessions N     smtp-source sessions (10)
 *   --size BYTES     message body size (10240)
 *   --warmup N       unmeasured messages per relay first (500)
 *   --systems a,b    subset of off,sqlite,redis (all; redis is left out, with a note, without redis-server)
 *   --out FILE       where the section goes (bench/RESULTS.md)
 * Each option can also come from the environment: BENCH_ROUNDS, BENCH_MESSAGES, and so on.
 */

const OPTIONS = {
  rounds: '6',
  messages: '3000',
  recipients: '3',
  sessions: '10',
  size: String(10 * 1024),
  warmup: '500',
  systems: 'off,sqlite,redis',
  out: path.join(import.meta.dirname, 'RESULTS.md'),
};
type Name = keyof typeof OPTIONS;
const names = Object.keys(OPTIONS) as Name[];
const envName = (name: string): string => `BENCH_${name.toUpperCase().replaceAll('-', '_')}`;
const { values } = parseArgs({ options: Object.fromEntries(names.map((name) => [name, { type: 'string' }])) as Record<Name, { type: 'string' }> });
const option = (name: Name): string => (values[name] as string | undefined) ?? process.env[envName(name)] ?? OPTIONS[name];
const count = (name: Name, min = 0): number => {
  const n = Number(option(name));
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be a whole number of at least ${min}, got ${option(name)}`);
  return n;
};
const ROUNDS = count('rounds', 1);
const MESSAGES = count('messages', 1);
const RECIPIENTS = count('recipients', 1);
const SESSIONS = count('sessions', 1);
const SIZE = count('size', 1);
const WARMUP = count('warmup');
const progress = (line: string): void => void process.stderr.write(`abuse: ${line}\n`);

/** Far above anything a run sends, yet numbers: every window is counted (a window set to false is skipped, not counted). */
const FAR = 1_000_000_000;
const COUNTED = { perMinute: FAR, perHour: FAR, perDay: FAR, messages: { perMinute: FAR, perHour: FAR, perDay: FAR } };
/** The guard as an admin runs it, out of the way: every window counts, anomaly history is written (its defaults), nothing is held. */
const GUARD_ON = { limits: COUNTED, addressLimits: COUNTED, anomaly: {}, hold: false };
/** The anomaly rule's history key of the bench's sender (a client that does not authenticate: its envelope sender). */
const PRINCIPAL = `sender:${SENDER}`;

const KINDS = {
  off: 'guard off (as `npm run bench`)',
  sqlite: 'guard on, state file (SQLite)',
  redis: 'guard on, Redis (`limits.redis`)',
} as const;
type Kind = keyof typeof KINDS;

interface Measured {
  kind: Kind;
  round: number;
  rate: number;
  /** CPU seconds of the relay's process tree, and of redis-server (the Redis variant's own). */
  relayCpu: number;
  redisCpu: number;
}

interface Relay {
  kind: Kind;
  system: System;
  memo: string;
}

/** A redis-server of this command's own: a free loopback port, nothing persisted, its own process group. */
async function startRedis(dir: string): Promise<{ port: number; child: ChildProcess }> {
  const port = await freePort();
  const logFile = path.join(dir, 'redis.log');
  const log = openSync(logFile, 'w');
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--logfile', ''], { stdio: ['ignore', log, log], detached: true });
  await until('redis-server to accept connections', 30_000, () => {
    if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}: ${readFileSync(logFile, 'utf8')}`);
    return readFileSync(logFile, 'utf8').includes('Ready to accept connections');
  });
  return { port, child };
}

const redisInstalled = async (): Promise<boolean> => (await run('sh', ['-c', 'command -v redis-server && command -v redis-cli'])).code === 0;

/** smtp-source's load, timed from its start until the sink holds every message, with the CPU each process tree used meanwhile. */
async function load(relay: Relay, sink: Sink, messages: number, round: number, redisPid: number | undefined): Promise<Measured> {
  await sink.reset();
  const relayBefore = cpuSeconds(relay.system.roots());
  const redisBefore = redisPid ? cpuSeconds([redisPid]) : 0;
  const started = process.hrtime.bigint();
  const args = ['-4', '-d', '-s', String(SESSIONS), '-m', String(messages), '-l', String(SIZE), '-r', String(RECIPIENTS), '-f', SENDER, '-t', RECIPIENT, '-S', 'bench', '-M', 'client.example.test', `127.0.0.1:${relay.system.port}`];
  const sent = await run('/usr/sbin/smtp-source', args, 60_000 + messages * 100);
  if (sent.code !== 0) throw new Error(`smtp-source against ${KINDS[relay.kind]} exited with ${sent.code}: ${(sent.stderr || sent.stdout).trim()}`);
  const deadline = Date.now() + 60_000;
  let arrived: number;
  // Every recipient is in sink.bench: the relay delivers each message as one transaction.
  while ((arrived = await sink.count()) < messages) {
    if (Date.now() > deadline) throw new Error(`${KINDS[relay.kind]}: ${arrived} of ${messages} messages reached the sink within 60 s of smtp-source's end`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const relayCpu = cpuSeconds(relay.system.roots()) - relayBefore;
  const redisCpu = redisPid ? cpuSeconds([redisPid]) - redisBefore : 0;
  const report = await sink.report();
  if (report.messages !== messages) throw new Error(`${KINDS[relay.kind]}: the sink counted ${report.messages} messages, ${messages} were sent`);
  if (report.signatures !== messages) throw new Error(`${KINDS[relay.kind]}: ${report.signatures} DKIM-Signature fields on ${messages} messages`);
  if (report.verified !== report.sampled) throw new Error(`${KINDS[relay.kind]}: a sampled message did not verify at the sink: ${report.failure}`);
  return { kind: relay.kind, round, rate: messages / seconds, relayCpu, redisCpu };
}

/** Recipients the guard wrote to the bench sender's history: the proof it was on (the SQLite state file, or Redis's ten-minute counters). */
async function history(relay: Relay, redisPort: number | undefined): Promise<number> {
  if (relay.kind === 'redis') {
    const cli = (...args: string[]) => run('redis-cli', ['-p', String(redisPort), ...args]);
    const keys = (await cli('--scan', '--pattern', `hygiene-relay:abuse:v1:{${PRINCIPAL}}:n:*`)).stdout.split('\n').filter(Boolean);
    if (keys.length === 0) return 0;
    return (await cli('mget', ...keys)).stdout.split('\n').filter(Boolean).reduce((sum, n) => sum + Number(n), 0);
  }
  const { DatabaseSync } = process.getBuiltinModule('node:sqlite');
  const db = new DatabaseSync(relay.memo, { readOnly: true });
  try {
    const exists = db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'abuse_sent_v1'").get() as { n: number };
    if (!exists.n) return 0;
    return Number((db.prepare('SELECT coalesce(sum(recipients), 0) AS n FROM abuse_sent_v1 WHERE principal = ?').get(PRINCIPAL) as { n: number }).n);
  } finally {
    db.close();
  }
}

const kinds = option('systems').split(',').map((id) => {
  if (!(id in KINDS)) throw new Error(`unknown system ${id} (known: ${Object.keys(KINDS).join(', ')})`);
  return id as Kind;
});
if (!kinds.includes('off')) throw new Error('--systems must include off: it is the baseline of every ratio');

const notes: string[] = [];
const dir = mkdtempSync(path.join(tmpdir(), 'hygiene-bench-abuse-'));
const startedAt = Date.now();
const loadAverage = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const busyBefore = machineBusySeconds();
const oursBefore = cpuSeconds([process.pid]);
const { dns, keys } = await startDns(dir);
// Every 500th message is verified at the sink (after its round, not within it).
const sink = await Sink.start(dns, 500);
const relays: Relay[] = [];
let redis: { port: number; child: ChildProcess } | undefined;
const measured: Measured[] = [];
let cleaning: Promise<void> | undefined;
/** Stops what this command started (the relays, redis-server, the sink, the DNS server), once. */
const cleanup = (): Promise<void> =>
  (cleaning ??= (async () => {
    for (const relay of relays) await relay.system.stop();
    if (redis) await stop(redis.child);
    await sink.stop();
    await dns.close();
    rmSync(dir, { recursive: true, force: true });
  })());
// The relays and redis-server run in process groups of their own: interrupted, stop them before leaving.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    progress(`${signal}: stopping the relays`);
    void cleanup().finally(() => process.exit(130));
  });
}
const written = new Map<Kind, number>();
let seconds = 0;
let otherCores = 0;
try {
  for (const kind of kinds) {
    if (kind === 'redis') {
      if (!(await redisInstalled())) {
        notes.push('Redis left out: redis-server (and redis-cli) are not installed.');
        continue;
      }
      redis = await startRedis(dir);
    }
    // A directory of its own: its config, log and memo (the state file) are no other relay's.
    const own = path.join(dir, kind);
    mkdirSync(own);
    const guard = kind === 'off' ? {} : { abuse: GUARD_ON, ...(kind === 'redis' ? { limits: { redis: `redis://127.0.0.1:${redis!.port}/0` } } : {}) };
    progress(`starting the relay: ${KINDS[kind]}`);
    const system = await startRelay(own, 'rsa', 1, dns, keys, sink, { config: guard });
    relays.push({ kind, system, memo: path.join(own, 'memo-rsa.sqlite') });
  }
  const redisPid = (relay: Relay): number | undefined => (relay.kind === 'redis' ? redis!.child.pid : undefined);
  for (const relay of relays) {
    progress(`warm-up: ${KINDS[relay.kind]}`);
    if (WARMUP > 0) await load(relay, sink, WARMUP, 0, redisPid(relay));
  }
  for (let round = 1; round <= ROUNDS; round++) {
    // A different relay first each round: none always runs on a machine still busy with the one before.
    const order = relays.map((_, i) => relays[(i + round - 1) % relays.length]);
    for (const relay of order) {
      const m = await load(relay, sink, MESSAGES, round, redisPid(relay));
      measured.push(m);
      progress(`round ${round}/${ROUNDS}: ${KINDS[relay.kind]} ${fmt(m.rate)} msg/s, ${fmt((m.relayCpu / MESSAGES) * 1000, 2)} relay CPU s per 1,000${relay.kind === 'redis' ? ` + ${fmt((m.redisCpu / MESSAGES) * 1000, 2)} Redis` : ''}`);
    }
  }
  seconds = (Date.now() - startedAt) / 1000;
  const ours = cpuSeconds([process.pid, ...relays.flatMap((r) => r.system.roots()), ...(redis ? [redis.child.pid!] : [])]);
  otherCores = Math.max(0, (machineBusySeconds() - busyBefore - (ours - oursBefore)) / seconds);
  for (const relay of relays) written.set(relay.kind, await history(relay, redis?.port));
} finally {
  await cleanup();
}

// The guard must have been on where it was meant to be, and off where not, or the ratios say nothing.
const recipientsSent = (WARMUP + ROUNDS * MESSAGES) * RECIPIENTS;
for (const [kind, n] of written) {
  const expected = kind === 'off' ? 0 : recipientsSent;
  if (n !== expected) throw new Error(`${KINDS[kind]}: the guard wrote ${n} recipients to ${SENDER}'s history, ${expected} expected`);
}

const ran = [...written.keys()];
const per1000 = (cpu: number): number => (cpu / MESSAGES) * 1000;
const of = (kind: Kind): Measured[] => measured.filter((m) => m.kind === kind);
/** The median of per-round ratios to the guard-off relay of the same round. */
const ratio = (kind: Kind, value: (m: Measured) => number): string => {
  const ratios = of(kind).flatMap((m) => {
    const base = measured.find((b) => b.kind === 'off' && b.round === m.round);
    return base ? [value(m) / value(base)] : [];
  });
  return `${fmt(median(ratios), 2)}×`;
};
const cell = (kind: Kind, value: (m: Measured) => number, digits: number): string => `${fmt(median(of(kind).map(value)), digits)} (${ratio(kind, value)})`;
const range = (kind: Kind, value: (m: Measured) => number, digits: number): string => {
  const all = of(kind).map(value);
  return `${fmt(Math.min(...all), digits)}–${fmt(Math.max(...all), digits)}`;
};
const rate = (m: Measured): number => m.rate;
const relayCpu = (m: Measured): number => per1000(m.relayCpu);
const withRedis = (m: Measured): number => per1000(m.relayCpu + m.redisCpu);
const rows: string[][] = [
  ['msg/s', ...ran.map((k) => cell(k, rate, 0))],
  ['msg/s, min–max of the rounds', ...ran.map((k) => range(k, rate, 0))],
  ['recipients/s', ...ran.map((k) => fmt(median(of(k).map(rate)) * RECIPIENTS))],
  ['relay CPU s per 1,000 messages', ...ran.map((k) => cell(k, relayCpu, 2))],
  ...(ran.includes('redis') ? [['relay + redis-server CPU s per 1,000 messages', ...ran.map((k) => cell(k, withRedis, 2))]] : []),
];

// What reproduces this run: the flags given, and the BENCH_ variables that were set.
const args = process.argv.slice(2);
const env = names.filter((name) => values[name] === undefined && process.env[envName(name)] !== undefined).map((name) => `${envName(name)}=${process.env[envName(name)]} `);
const command = `${env.join('')}npm run bench:abuse${args.length ? ` -- ${args.join(' ')}` : ''}`;
const out: string[] = ['## Abuse guard cost', ''];
out.push(
  `\`${command}\` (bench/abuse.ts), ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, ${fmt(seconds)} s; Node ${process.version}. The relay (RSA-2048, preflight on, one worker) started once per column; ${fmt(ROUNDS)} alternating round(s) of ${fmt(MESSAGES)} messages of ${fmt(SIZE / 1024, SIZE % 1024 ? 1 : 0)} KB from one envelope sender <${SENDER}>, ${fmt(RECIPIENTS)} recipient(s) each, over ${fmt(SESSIONS)} smtp-source sessions, after ${fmt(WARMUP)} unmeasured. Guard on: every window of \`abuse.limits\` and \`abuse.addressLimits\` counting (recipients and messages per minute, hour and day, for the client address and the envelope sender) at ${fmt(FAR)}, \`anomaly\` at its defaults (each recipient written to the sender's ten-minute history${ran.some((k) => k !== 'off') ? `: all ${fmt(recipientsSent)} found there after the run, in each guard-on relay's store` : ''}), \`hold: false\`. Guard off: every window \`false\` and \`anomaly: false\`, as \`npm run bench\` runs it (the hold lookup per RCPT stays).`,
  '',
  `Medians of the rounds; in parentheses the median of per-round ratios to the guard-off relay of the same round. The machine (2 cores) is shared: load average ${loadAverage} at the start, other processes used ${fmt(otherCores, 2)} cores on average during the run.`,
  '',
);
out.push(table(['', ...ran.map((k) => KINDS[k])], rows));
if (notes.length) out.push('', ...notes);
const text = out.join('\n');
process.stdout.write(`${text}\n`);
const file = option('out');
if (!existsSync(path.dirname(file))) throw new Error(`--out: no directory ${path.dirname(file)}`);
writeSection(file, '## Abuse guard cost', text);
progress(`results written to ${file}`);
