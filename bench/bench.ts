import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { run } from '../interop/exec.ts';
import { paced } from './paced.ts';
import { cpuSeconds, machineBusySeconds, peakRss } from './proc.ts';
import { postfixVersions, RECIPIENT, SENDER, Sink, SINK_HOST, startDns, startPostfix, startRelay, type RelayVariant, type System, type Versions } from './systems.ts';

/**
 * `npm run bench`: every system against the same sink, in one run on one machine, rounds
 * alternating between the systems so that a change in the machine's load touches them all
 * alike; ratios are taken within a round.
 */

export interface Scenario {
  id: string;
  label: string;
  /** smtp-source -l: body bytes, headers not counted. */
  size: number;
  sessions: number;
  /** false: a new connection per message (smtp-source without -d). */
  reuse: boolean;
  /** Share of --messages sent: the slow scenarios send fewer so a round stays short. */
  share: number;
}

export const SCENARIOS: Scenario[] = [
  { id: '10k-10', label: '10 KB, 10 sessions', size: 10 * 1024, sessions: 10, reuse: true, share: 1 },
  { id: '10k-1', label: '10 KB, 1 session', size: 10 * 1024, sessions: 1, reuse: true, share: 0.5 },
  { id: '10k-50', label: '10 KB, 50 sessions', size: 10 * 1024, sessions: 50, reuse: true, share: 1 },
  { id: '100k-10', label: '100 KB, 10 sessions', size: 100 * 1024, sessions: 10, reuse: true, share: 0.5 },
  { id: '10k-10-new', label: '10 KB, 10 sessions, a new connection per message', size: 10 * 1024, sessions: 10, reuse: false, share: 1 },
];

export const SYSTEMS = ['postfix', 'relay-rsa', 'relay-ed25519', 'relay-dual', 'sink'] as const;
/** Ratios are to this system, from the same round. */
export const BASELINE = 'postfix';

export interface BenchOptions {
  rounds: number;
  messages: number;
  /** Scenario ids, in the order they run. */
  scenarios: string[];
  /** System ids; Postfix is left out (with a note) when it is neither installed nor installable. */
  systems: string[];
  /** Messages of the latency run per system; 0: no latency table. */
  latencyMessages: number;
  /** msg/s of the latency run; default half the relay's measured rate. */
  latencyRate?: number;
  /** The relay's `workers` setting. */
  relayWorkers: number | 'auto';
  /** Messages each system gets before the first round (fills caches, pools and process pools). */
  warmup: number;
  /** The sink keeps every Nth message for mailauth. */
  sampleEvery: number;
  /** Progress, one line at a time. */
  progress: (line: string) => void;
}

export interface Measurement {
  system: string;
  scenario: string;
  round: number;
  messages: number;
  seconds: number;
  rate: number;
  cpuSeconds: number;
  /** Peak RSS (VmHWM) of the system's live processes so far, summed, in bytes. */
  peakRss: number;
  signatures: number;
  sampled: number;
  verified: number;
  failure?: string;
}

export interface Latency {
  system: string;
  rate: number;
  messages: number;
  /** End of DATA → final reply, and → arrival at the sink, in ms. */
  reply: { p50: number; p99: number };
  arrival: { p50: number; p99: number };
}

export interface BenchResult {
  options: Omit<BenchOptions, 'progress'>;
  systems: { id: string; label: string }[];
  measurements: Measurement[];
  latency: Latency[];
  versions?: Versions;
  /** Why a system asked for did not run. */
  notes: string[];
  /** Average cores used by processes other than the bench's during the run: how quiet the machine was. */
  otherCores: number;
  seconds: number;
}

const WARMUP_SCENARIO: Scenario = SCENARIOS[0];

function smtpSourceArgs(system: System, scenario: Scenario, messages: number): string[] {
  return [
    '-4',
    ...(scenario.reuse ? ['-d'] : []),
    ...['-s', String(scenario.sessions), '-m', String(messages), '-l', String(scenario.size)],
    ...['-f', SENDER, '-t', RECIPIENT, '-S', 'bench', '-M', 'client.example.test'],
    `${system.id === 'sink' ? SINK_HOST : '127.0.0.1'}:${system.port}`,
  ];
}

/**
 * One measured load: from smtp-source's start until the sink holds every message (Postfix
 * answers 250 before it delivers: the time its queue needs to drain is its time too).
 */
async function load(system: System, sink: Sink, scenario: Scenario, messages: number, round: number): Promise<Measurement> {
  await sink.reset();
  const cpuBefore = cpuSeconds(system.roots());
  const started = process.hrtime.bigint();
  const sent = await run('/usr/sbin/smtp-source', smtpSourceArgs(system, scenario, messages), 60_000 + messages * 100);
  if (sent.code !== 0) throw new Error(`smtp-source against ${system.label} exited with ${sent.code}: ${(sent.stderr || sent.stdout).trim()}`);
  const deadline = Date.now() + 60_000;
  let arrived: number;
  while ((arrived = await sink.count()) < messages) {
    if (Date.now() > deadline) throw new Error(`${system.label}: ${arrived} of ${messages} messages reached the sink within 60 s of smtp-source's end`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const cpu = cpuSeconds(system.roots()) - cpuBefore;
  const report = await sink.report();
  if (report.messages !== messages) throw new Error(`${system.label}: the sink counted ${report.messages} messages, ${messages} were sent`);
  return {
    system: system.id,
    scenario: scenario.id,
    round,
    messages,
    seconds,
    rate: messages / seconds,
    cpuSeconds: cpu,
    peakRss: peakRss(system.roots()),
    signatures: report.signatures,
    sampled: report.sampled,
    verified: report.verified,
    failure: report.failure,
  };
}

function percentile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

async function latency(system: System, sink: Sink, rate: number, messages: number): Promise<Latency> {
  await sink.reset();
  const result = await paced({ host: system.id === 'sink' ? SINK_HOST : '127.0.0.1', port: system.port, rate, messages, connections: 10, size: 10 * 1024, prefix: system.id });
  const deadline = Date.now() + 60_000;
  while ((await sink.count()) < messages) {
    if (Date.now() > deadline) throw new Error(`${system.label}: not every paced message reached the sink`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const { arrivals } = await sink.report();
  const arrival = [...result.endOfData].map(([id, at]) => Number(BigInt(arrivals[id]) - at) / 1e6);
  return {
    system: system.id,
    rate,
    messages,
    reply: { p50: percentile(result.replyMs, 0.5), p99: percentile(result.replyMs, 0.99) },
    arrival: { p50: percentile(arrival, 0.5), p99: percentile(arrival, 0.99) },
  };
}

/** Postfix + OpenDKIM where they are or can be installed (bench/install.sh); otherwise why not. */
async function ensurePostfix(progress: (line: string) => void): Promise<Versions | string> {
  const installed = await postfixVersions();
  if (installed) return installed;
  progress('installing postfix and opendkim (bench/install.sh)');
  const ran = await run('bash', [path.join(import.meta.dirname, 'install.sh')], 600_000);
  if (ran.code !== 0) return `Postfix + OpenDKIM left out: ${(ran.stderr || ran.stdout).trim()}`;
  return (await postfixVersions()) ?? 'Postfix + OpenDKIM left out: not found after installing';
}

export async function runBench(options: BenchOptions): Promise<BenchResult> {
  const scenarios = options.scenarios.map((id) => {
    const scenario = SCENARIOS.find((s) => s.id === id);
    if (!scenario) throw new Error(`unknown scenario ${id} (known: ${SCENARIOS.map((s) => s.id).join(', ')})`);
    return scenario;
  });
  for (const id of options.systems) if (!(SYSTEMS as readonly string[]).includes(id)) throw new Error(`unknown system ${id} (known: ${SYSTEMS.join(', ')})`);
  const notes: string[] = [];
  const dir = mkdtempSync(path.join(tmpdir(), 'hygiene-bench-'));
  const started = process.hrtime.bigint();
  // The machine's busy time and ours, read together: the difference of their growth is what
  // other processes took during the run.
  const busyBefore = machineBusySeconds();
  const oursBefore = cpuSeconds([process.pid]);
  const { dns, keys } = await startDns(dir);
  const sink = await Sink.start(dns, options.sampleEvery);
  const systems: System[] = [];
  let versions: Versions | undefined;
  try {
    for (const id of options.systems) {
      if (id === 'sink') systems.push(sink.asSystem());
      else if (id === 'postfix') {
        const found = await ensurePostfix(options.progress);
        if (typeof found === 'string') notes.push(found);
        else {
          versions = found;
          systems.push(await startPostfix(keys, sink, found));
        }
      } else systems.push(await startRelay(dir, id.slice('relay-'.length) as RelayVariant, options.relayWorkers, dns, keys, sink));
    }
    // Not measured: DNS answers cached, upstream pools and Postfix's process pools filled, JIT warm.
    for (const system of systems) {
      options.progress(`warm-up: ${system.label}`);
      await load(system, sink, WARMUP_SCENARIO, options.warmup, 0);
    }

    const measurements: Measurement[] = [];
    for (let round = 1; round <= options.rounds; round++) {
      for (const scenario of scenarios) {
        const messages = Math.max(1, Math.round(options.messages * scenario.share));
        // A different system goes first each round, so that none always runs on a machine
        // still busy with (or freshly idle after) the one before.
        const order = systems.map((_, i) => systems[(i + round - 1) % systems.length]);
        for (const system of order) {
          const m = await load(system, sink, scenario, messages, round);
          measurements.push(m);
          options.progress(`round ${round}/${options.rounds} ${scenario.label}: ${system.label} ${m.rate.toFixed(0)} msg/s, ${((m.cpuSeconds / m.messages) * 1000).toFixed(2)} CPU s per 1,000`);
        }
      }
    }

    const latencies: Latency[] = [];
    if (options.latencyMessages > 0) {
      const relay = systems.find((s) => s.id === 'relay-rsa') ?? systems.find((s) => s.id.startsWith('relay-'));
      const scenario = scenarios.find((s) => s.id === '10k-10') ?? scenarios[0];
      const relayRate = relay && scenario ? median(measurements.filter((m) => m.system === relay.id && m.scenario === scenario.id).map((m) => m.rate)) : undefined;
      const rate = options.latencyRate ?? (relayRate === undefined ? undefined : relayRate / 2);
      if (rate === undefined) notes.push('No latency table: no relay was measured to take half the rate of (give --latency-rate).');
      else {
        for (const system of systems.filter((s) => s === relay || s.id === 'postfix' || s.id === 'sink')) {
          options.progress(`latency at ${rate.toFixed(0)} msg/s: ${system.label}`);
          latencies.push(await latency(system, sink, rate, options.latencyMessages));
        }
      }
    }
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    // Everything the bench ran: the driver, its children (smtp-source once reaped) and Postfix's master tree.
    const ours = cpuSeconds([process.pid, ...systems.flatMap((s) => s.roots())]);
    const otherCores = (machineBusySeconds() - busyBefore - (ours - oursBefore)) / seconds;
    const { progress: _, ...recorded } = options;
    return { options: recorded, systems: systems.map((s) => ({ id: s.id, label: s.label })), measurements, latency: latencies, versions, notes, otherCores: Math.max(0, otherCores), seconds };
  } finally {
    for (const system of systems) await system.stop();
    await sink.stop();
    await dns.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
