import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { run } from '../interop/exec.ts';
import { fmt, table, writeSection } from './sections.ts';
import { RECIPIENT, SENDER, Sink, startDns, startRelay } from './systems.ts';

/**
 * `npm run bench:profile [-- options]`: where the relay's CPU goes. The relay (RSA-2048,
 * preflight on) runs under `--cpu-prof` with its launcher's Node flags; smtp-source sends
 * --messages 10 KB messages over 10 sessions into the bench's sink after a warm-up; the
 * samples taken during that load are summed by category (the script URL of each frame's own
 * code) as shares of busy time. It profiles this tree ("after") and the relay code of
 * --before (a commit, checked out as a worktree beside this one, default 856b54d: the one
 * before issue 15's part-3 changes), each with this harness, and rewrites the "## Where the
 * time goes" section of bench/RESULTS.md.
 *   --messages N (2000)   --warmup N (300)   --before COMMIT|none   --out FILE
 */

const { values } = parseArgs({
  options: {
    messages: { type: 'string', default: '2000' },
    warmup: { type: 'string', default: '300' },
    before: { type: 'string', default: '856b54d' },
    out: { type: 'string', default: path.join(import.meta.dirname, 'RESULTS.md') },
  },
});
const ROOT = path.resolve(import.meta.dirname, '..');
const progress = (line: string): void => void process.stderr.write(`profile: ${line}\n`);

interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string }; children?: number[] }[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** Categories in the order a frame is tested against them: the first whose test its URL passes. */
const CATEGORIES: [string, (url: string) => boolean][] = [
  ['mailauth', (u) => u.includes('/node_modules/mailauth/')],
  ['smtp-server (client side parsing)', (u) => u.includes('/node_modules/smtp-server/')],
  ['upstream session (src/upstream)', (u) => u.includes('/src/upstream/')],
  ['DKIM signing (src/auth/dkim)', (u) => u.includes('/src/auth/dkim/')],
  ['preflight (src/auth/preflight.ts, src/proxy/preflight-run.ts)', (u) => u.endsWith('/src/auth/preflight.ts') || u.endsWith('/src/proxy/preflight-run.ts')],
  ['proxy (src/proxy)', (u) => u.includes('/src/proxy/')],
  ['DNS (src/dns)', (u) => u.includes('/src/dns/')],
  ['delivery (src/delivery)', (u) => u.includes('/src/delivery/')],
  ['pino (and its streams)', (u) => /\/node_modules\/(pino|sonic-boom|thread-stream|pino-std-serializers|@pinojs|fast-redact|quick-format-unescaped)/.test(u)],
  ['the rest of the relay (src/)', (u) => u.includes('/src/')],
  ['other packages', (u) => u.includes('/node_modules/')],
  ['Node internals (streams, net, crypto in JS)', (u) => u.startsWith('node:')],
];
const SPECIAL = new Map([
  ['(garbage collector)', 'GC'],
  ['(program)', 'program (V8 and Node outside JS)'],
  ['(idle)', 'idle'],
]);
const NATIVE = 'native (C++ functions called from JS)';

interface Breakdown {
  /** µs of self time by category, over the load's samples. */
  self: Map<string, number>;
  /** Native and Node-internal self time by the category of the nearest caller in the relay or a package, and the top native functions. */
  native: Map<string, number>;
  nativeFunctions: Map<string, number>;
  busy: number;
  seconds: number;
}

function categoryOf(url: string): string {
  return CATEGORIES.find(([, test]) => test(url))?.[0] ?? 'other';
}

/** Self time of the samples between `from` and `to` (µs on the monotonic clock the profile uses), by category. */
function breakdown(profile: CpuProfile, from: number, to: number): Breakdown {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const out: Breakdown = { self: new Map(), native: new Map(), nativeFunctions: new Map(), busy: 0, seconds: (to - from) / 1e6 };
  const add = (map: Map<string, number>, key: string, us: number): void => void map.set(key, (map.get(key) ?? 0) + us);
  let at = profile.startTime;
  for (let i = 0; i < profile.samples.length; i++) {
    at += profile.timeDeltas[i];
    // A sample's time is the delta to the next one.
    const us = profile.timeDeltas[i + 1] ?? 0;
    if (at < from || at > to) continue;
    const node = byId.get(profile.samples[i])!;
    const { functionName, url } = node.callFrame;
    const special = SPECIAL.get(functionName);
    if (special) {
      add(out.self, special, us);
      continue;
    }
    if (url && !url.startsWith('node:')) {
      add(out.self, categoryOf(url), us);
      continue;
    }
    if (url) add(out.self, categoryOf(url), us);
    else {
      add(out.self, NATIVE, us);
      add(out.nativeFunctions, functionName || '(anonymous)', us);
    }
    // Streams and sockets do work on behalf of whoever called them: the nearest frame of the relay or a package.
    let up = parent.get(node.id);
    const ours = (id: number): boolean => {
      const u = byId.get(id)!.callFrame.url;
      return u !== '' && !u.startsWith('node:');
    };
    while (up !== undefined && !ours(up)) up = parent.get(up);
    add(out.native, up === undefined ? 'no caller of the relay or a package (event-loop callbacks in Node)' : categoryOf(byId.get(up)!.callFrame.url), us);
  }
  for (const [key, us] of out.self) if (key !== 'idle') out.busy += us;
  return out;
}

/** The Node flags a tree's launcher passes (NODE_FLAGS="…" in bin/hygiene-relay), none before it had any. */
function launcherFlags(root: string): string[] {
  const text = readFileSync(path.join(root, 'bin/hygiene-relay'), 'utf8');
  return /^NODE_FLAGS="([^"]*)"/m.exec(text)?.[1].split(/\s+/).filter(Boolean) ?? [];
}

async function smtpSource(port: number, sink: Sink, messages: number): Promise<void> {
  await sink.reset();
  const sent = await run('/usr/sbin/smtp-source', ['-4', '-d', '-s', '10', '-m', String(messages), '-l', String(10 * 1024), '-f', SENDER, '-t', RECIPIENT, '-S', 'bench', '-M', 'client.example.test', `127.0.0.1:${port}`], 120_000 + messages * 100);
  if (sent.code !== 0) throw new Error(`smtp-source exited with ${sent.code}: ${(sent.stderr || sent.stdout).trim()}`);
  const deadline = Date.now() + 60_000;
  while ((await sink.count()) < messages) {
    if (Date.now() > deadline) throw new Error('not every message reached the sink within 60 s');
    await delay(5);
  }
}

interface Profiled {
  label: string;
  flags: string[];
  rate: number;
  result: Breakdown;
}

async function profile(label: string, root: string, dir: string, sink: Sink, dns: Parameters<typeof startRelay>[3], keys: Parameters<typeof startRelay>[4]): Promise<Profiled> {
  const profileDir = mkdtempSync(path.join(dir, 'cpu-'));
  const flags = launcherFlags(root);
  progress(`${label}: ${root}, ${flags.join(' ') || 'no launcher flags'}`);
  const relay = await startRelay(dir, 'rsa', 1, dns, keys, sink, { root, nodeFlags: [...flags, '--cpu-prof', `--cpu-prof-dir=${profileDir}`] });
  const messages = Number(values.messages);
  let from: bigint;
  let to: bigint;
  try {
    await smtpSource(relay.port, sink, Number(values.warmup));
    from = process.hrtime.bigint();
    await smtpSource(relay.port, sink, messages);
    to = process.hrtime.bigint();
  } finally {
    // The profile is written as the process exits.
    await relay.stop();
  }
  let file: string | undefined;
  for (let i = 0; i < 100 && !(file = readdirSync(profileDir).find((f) => f.endsWith('.cpuprofile'))); i++) await delay(100);
  if (!file) throw new Error(`${label}: the relay wrote no .cpuprofile`);
  const cpu = JSON.parse(readFileSync(path.join(profileDir, file), 'utf8')) as CpuProfile;
  // The profile's clock is the monotonic one of process.hrtime, in µs.
  const result = breakdown(cpu, Number(from / 1000n), Number(to / 1000n));
  progress(`${label}: ${fmt(messages / result.seconds)} msg/s under the profiler`);
  return { label, flags, rate: messages / result.seconds, result };
}

const dir = mkdtempSync(path.join(tmpdir(), 'hygiene-bench-profile-'));
const worktree = values.before === 'none' ? undefined : path.join(dir, 'before');
const { dns, keys } = await startDns(dir);
const sink = await Sink.start(dns, 1_000_000);
const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const head = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
const runs: Profiled[] = [];
try {
  if (worktree) {
    execFileSync('git', ['-C', ROOT, 'worktree', 'add', '--detach', worktree, values.before!], { stdio: 'ignore' });
    // The same packages: the code differs, not its dependencies.
    symlinkSync(path.join(ROOT, 'node_modules'), path.join(worktree, 'node_modules'));
    runs.push(await profile(`before (${values.before})`, worktree, dir, sink, dns, keys));
  }
  runs.push(await profile(`after (${head}${execFileSync('git', ['-C', ROOT, 'status', '--porcelain', 'src', 'bin'], { encoding: 'utf8' }).trim() ? ' and the work tree' : ''})`, ROOT, dir, sink, dns, keys));
} finally {
  await sink.stop();
  await dns.close();
  if (worktree && existsSync(worktree)) execFileSync('git', ['-C', ROOT, 'worktree', 'remove', '--force', worktree]);
  rmSync(dir, { recursive: true, force: true });
}

const share = (b: Breakdown, us: number | undefined): string => `${fmt(((us ?? 0) / b.busy) * 100, 1)}%`;
const keysOf = (pick: (b: Breakdown) => Map<string, number>): string[] => {
  const total = new Map<string, number>();
  for (const r of runs) for (const [k, us] of pick(r.result)) if (k !== 'idle') total.set(k, (total.get(k) ?? 0) + us / r.result.busy);
  return [...total].sort((a, b) => b[1] - a[1]).map(([k]) => k);
};
const out: string[] = ['## Where the time goes', ''];
out.push(
  `\`npm run bench:profile\` (bench/profile.ts), ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC: the relay (RSA-2048, preflight on, enforce) under \`--cpu-prof\` with its launcher's flags, ${fmt(Number(values.warmup))} messages of warm-up, then ${fmt(Number(values.messages))} messages of 10 KB from smtp-source over 10 sessions into the bench's sink; only the samples of that load count. Self time by the script of each frame, as a share of busy time (every sample but idle). The machine (2 cores) is shared with other sessions running tests (load average ${load} at the start), and the profiler slows the relay, so the rates are not the bench's; the shares are what to compare.`,
  '',
);
// A category's own code plus the Node internals and native work it called (a socket write, an RSA operation).
const withCalls = (b: Breakdown, k: string): number | undefined => (k === NATIVE || k.startsWith('Node internals') ? undefined : (b.self.get(k) ?? 0) + (b.native.get(k) ?? 0));
out.push(
  table(
    ['category', ...runs.flatMap((r) => [`${r.label}: self`, 'with the Node work it called'])],
    [
      ...keysOf((b) => b.self).map((k) => [k, ...runs.flatMap((r) => [share(r.result, r.result.self.get(k)), withCalls(r.result, k) === undefined ? '' : share(r.result, withCalls(r.result, k))])]),
      ...['no caller of the relay or a package (event-loop callbacks in Node)'].map((k) => [k, ...runs.flatMap((r) => ['', share(r.result, r.result.native.get(k))])]),
      ['busy CPU s per 1,000 messages', ...runs.flatMap((r) => [fmt(r.result.busy / 1e6 / (Number(values.messages) / 1000), 2), ''])],
      ['msg/s under the profiler', ...runs.flatMap((r) => [fmt(r.rate), ''])],
      ['Node flags (the launcher\'s)', ...runs.flatMap((r) => [r.flags.join(' ') || 'none', ''])],
    ],
  ),
);
out.push('', '"With the Node work it called": the self time of Node internals and native functions goes to the nearest caller in the relay or a package. The biggest native functions:', '');
out.push(table(['native function', ...runs.map((r) => r.label)], keysOf((b) => b.nativeFunctions).slice(0, 8).map((k) => [`\`${k}\``, ...runs.map((r) => share(r.result, r.result.nativeFunctions.get(k)))])));
const text = out.join('\n');
process.stdout.write(`${text}\n`);
writeSection(values.out, '## Where the time goes', text);
