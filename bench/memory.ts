import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { run } from '../interop/exec.ts';
import { fmt, mb, table, writeSection } from './sections.ts';
import { RECIPIENT, SENDER, Sink, startDns, startRelay, type System } from './systems.ts';

/**
 * `npm run bench:memory [-- options]`: the issue-15 memory goals, measured on one relay
 * process (RSA-2048, preflight on) started through the launcher as the bench starts it:
 *   (a) resident size idle after start, and what it is made of;
 *   (b) 1,000 idle client connections (each past EHLO): growth per connection;
 *   (c) one 50 MB message, spooled (delivery.spool.memoryLimit 1MB): peak growth;
 *   (d) steady load (smtp-source, 10 sessions, 10 KB): RSS after 2,000 and after 8,000 messages.
 * Then what holds the idle memory: a bare `node`, each dependency imported alone in a fresh
 * process, and a heap snapshot of an idle relay. Prints the tables and rewrites the
 * "## Memory" section of bench/RESULTS.md (the reading of it is a section of its own).
 *   --connections N  (1000)   --big MiB (50)   --messages N (8000)   --out FILE
 */

const { values } = parseArgs({
  options: {
    connections: { type: 'string', default: '1000' },
    big: { type: 'string', default: '50' },
    messages: { type: 'string', default: '8000' },
    out: { type: 'string', default: path.join(import.meta.dirname, 'RESULTS.md') },
  },
});
const CONNECTIONS = Number(values.connections);
const BIG = Number(values.big) * 1024 * 1024;
const MESSAGES = Number(values.messages);
const STEP = 1000;
const ROOT = path.resolve(import.meta.dirname, '..');
const progress = (line: string): void => void process.stderr.write(`memory: ${line}\n`);

interface Reading {
  rss: number;
  hwm: number;
  /** smaps_rollup: anonymous pages (heaps, V8's spaces, Buffers) and the rest (mapped files: the node binary, libraries). */
  anon: number;
  file: number;
}

const kb = (text: string, field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024;

function read(pid: number): Reading {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const rss = kb(rollup, 'Rss');
  const anon = kb(rollup, 'Anonymous');
  return { rss: kb(status, 'VmRSS'), hwm: kb(status, 'VmHWM'), anon, file: rss - anon };
}

/** Resident bytes by mapping: the node binary, other files, and anonymous memory, from /proc/PID/smaps. */
function mappings(pid: number, binary: string): { binary: number; otherFiles: number; anon: number } {
  const out = { binary: 0, otherFiles: 0, anon: 0 };
  let name = '';
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) name = head[1];
    else if (line.startsWith('Rss:')) {
      const bytes = kb(line, 'Rss');
      if (name === binary) out.binary += bytes;
      else if (name.startsWith('/')) out.otherFiles += bytes;
      else out.anon += bytes;
    }
  }
  return out;
}

/** Lets a process settle (timers of its start-up, a collection) before it is read. */
const settle = (ms = 3000): Promise<void> => delay(ms);

/** A client that has had its greeting and its EHLO answered, then waits. */
function idleClient(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let text = '';
    let stage: 'greeting' | 'ehlo' = 'greeting';
    socket.setEncoding('latin1');
    socket.on('error', reject);
    socket.on('data', (chunk: string) => {
      text += chunk;
      // The last line of a reply has a space after its code.
      if (!/^\d{3} [^\n]*\r\n/m.test(text)) return;
      if (stage === 'greeting') {
        if (!text.startsWith('220')) return reject(new Error(`greeting: ${text.trim()}`));
        stage = 'ehlo';
        text = '';
        socket.write('EHLO client.example.test\r\n');
      } else {
        if (!text.startsWith('250')) return reject(new Error(`EHLO: ${text.trim()}`));
        socket.removeAllListeners('data');
        resolve(socket);
      }
    });
  });
}

async function smtpSource(system: System, sink: Sink, messages: number, size: number, sessions: number): Promise<void> {
  await sink.reset();
  const sent = await run('/usr/sbin/smtp-source', ['-4', '-d', '-s', String(sessions), '-m', String(messages), '-l', String(size), '-f', SENDER, '-t', RECIPIENT, '-S', 'bench', '-M', 'client.example.test', `127.0.0.1:${system.port}`], 120_000 + messages * 100);
  if (sent.code !== 0) throw new Error(`smtp-source exited with ${sent.code}: ${(sent.stderr || sent.stdout).trim()}`);
  const deadline = Date.now() + 120_000;
  while ((await sink.count()) < messages) {
    if (Date.now() > deadline) throw new Error(`not every message reached the sink within 120 s`);
    await delay(20);
  }
}

interface Imported {
  what: string;
  heap: number;
  rss: number;
}

/** `specifiers` imported alone in a fresh Node (the launcher's flags), heapUsed and RSS around the imports after full collections. */
function imported(what: string, specifiers: string[]): Imported {
  const code = `const m=()=>{gc();gc();return process.memoryUsage()};const a=m();for(const s of ${JSON.stringify(specifiers)})await import(s);const b=m();console.log(JSON.stringify({heap:b.heapUsed-a.heapUsed,rss:b.rss-a.rss}))`;
  const out = execFileSync(process.execPath, ['--max-semi-space-size=8', '--expose-gc', '--input-type=module', '-e', code], { cwd: ROOT, encoding: 'utf8' });
  return { what, ...(JSON.parse(out) as { heap: number; rss: number }) };
}

/** What the relay's start loads, package by package, the way its modules name them. */
const IMPORTS: [string, string[]][] = [
  ['the relay, everything `start` loads (src/cli/index.ts)', [pathToFileURL(path.join(ROOT, 'src/cli/index.ts')).href]],
  ['smtp-server', ['smtp-server']],
  ['ioredis', ['ioredis']],
  ['prom-client', ['prom-client']],
  ['pino', ['pino']],
  ['zod', ['zod']],
  ['mailauth: SPF + DMARC + MTA-STS parts (what start loads)', ['mailauth/lib/spf/index.js', 'mailauth/lib/dmarc/index.js', 'mailauth/lib/mta-sts.js']],
  ['mailauth: its index (loaded only for a message signed before the relay)', ['mailauth']],
  ['nodemailer/lib/mime-node + addressparser', ['nodemailer/lib/mime-node/index.js', 'nodemailer/lib/addressparser/index.js']],
  ['rate-limiter-flexible', ['rate-limiter-flexible']],
  ['yaml', ['yaml']],
  ['lru-cache', ['lru-cache']],
  ['dns-packet', ['dns-packet']],
  ['node:sqlite (the memo)', ['node:sqlite']],
];

interface HeapGroup {
  name: string;
  count: number;
  bytes: number;
}

/**
 * A heap snapshot's nodes summed by what they are (V8's node type, and for objects their
 * constructor, for code its kind), the Summary view of DevTools; and script sources (kept
 * as strings for every module loaded) by package.
 */
function summarise(file: string): { total: number; groups: HeapGroup[]; sources: HeapGroup[] } {
  const snapshot = JSON.parse(readFileSync(file, 'utf8')) as {
    snapshot: { meta: { node_fields: string[]; node_types: [string[]]; edge_fields: string[]; edge_types: [string[]] } };
    nodes: number[];
    edges: number[];
    strings: string[];
  };
  const { meta } = snapshot.snapshot;
  const width = meta.node_fields.length;
  const [typeAt, nameAt, sizeAt, edgesAt] = ['type', 'name', 'self_size', 'edge_count'].map((f) => meta.node_fields.indexOf(f));
  const edgeWidth = meta.edge_fields.length;
  const [edgeTypeAt, edgeNameAt, edgeToAt] = ['type', 'name_or_index', 'to_node'].map((f) => meta.edge_fields.indexOf(f));
  const types = meta.node_types[0];
  const edgeTypes = meta.edge_types[0];
  const { nodes, edges, strings } = snapshot;
  const groups = new Map<string, HeapGroup>();
  const add = (into: Map<string, HeapGroup>, name: string, bytes: number): void => {
    const group = into.get(name) ?? { name, count: 0, bytes: 0 };
    group.count++;
    group.bytes += bytes;
    into.set(name, group);
  };
  const sources = new Map<string, HeapGroup>();
  let total = 0;
  let edge = 0;
  for (let at = 0; at < nodes.length; at += width) {
    const type = types[nodes[at + typeAt]];
    const name = strings[nodes[at + nameAt]];
    const bytes = nodes[at + sizeAt];
    total += bytes;
    const kind = type === 'object' || type === 'closure' ? `${type} ${name}` : type === 'code' || type === 'hidden' || type === 'array' ? `${type} ${name.replace(/^system \/ /, '').slice(0, 40)}` : type;
    add(groups, kind, bytes);
    const count = nodes[at + edgesAt];
    if (type === 'code') {
      // A Script is a code node named by its file or URL, whose "source" edge leads to the module's text.
      for (let e = edge; e < edge + count * edgeWidth; e += edgeWidth) {
        if (edgeTypes[edges[e + edgeTypeAt]] === 'internal' && strings[edges[e + edgeNameAt]] === 'source') add(sources, packageOf(name), nodes[edges[e + edgeToAt] + sizeAt]);
      }
    }
    edge += count * edgeWidth;
  }
  const top = (map: Map<string, HeapGroup>): HeapGroup[] => [...map.values()].sort((a, b) => b.bytes - a.bytes);
  return { total, groups: top(groups), sources: top(sources) };
}

function packageOf(url: string): string {
  const match = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (match) return match[1];
  if (url.includes('/src/') || url.includes('/bin/')) return 'the relay (src/)';
  return url.startsWith('node:') || !url.includes('/') ? 'Node built-ins' : 'other';
}

/** Signals the relay to write a heap snapshot (--heapsnapshot-signal) and waits until the file is complete. */
async function heapSnapshot(pid: number, dir: string): Promise<string> {
  process.kill(pid, 'SIGUSR2');
  let last = -1;
  for (let i = 0; i < 600; i++) {
    await delay(250);
    const file = readdirSync(dir).find((f) => f.endsWith('.heapsnapshot'));
    if (!file) continue;
    const size = statSync(path.join(dir, file)).size;
    if (size > 0 && size === last) return path.join(dir, file);
    last = size;
  }
  throw new Error('no heap snapshot within 150 s');
}

const dir = mkdtempSync(path.join(tmpdir(), 'hygiene-bench-memory-'));
const { dns, keys } = await startDns(dir);
const sink = await Sink.start(dns, 1_000_000);
const binary = execFileSync(process.execPath, ['-p', 'process.execPath'], { encoding: 'utf8' }).trim();
const started = Date.now();
const machine = execFileSync('cat', ['/proc/loadavg'], { encoding: 'utf8' }).split(' ').slice(0, 3).join(' ');
try {
  // A bare Node with the launcher's flags, waiting: the floor under any Node program.
  const bare = spawn(binary, ['--max-semi-space-size=8', '-e', 'setInterval(() => {}, 1e6)']);
  await settle(1500);
  const bareReading = read(bare.pid!);
  const bareMaps = mappings(bare.pid!, binary);
  bare.kill();

  progress('starting the relay through bin/hygiene-relay');
  const relay = await startRelay(dir, 'rsa', 1, dns, keys, sink, {
    config: { limits: { maxClients: CONNECTIONS + 100, maxMessageSize: BIG + 16 * 1024 * 1024 }, delivery: { spool: { memoryLimit: '1MB' } } },
  });
  const pid = relay.roots()[0];
  await settle();
  const idle = read(pid);
  const idleMaps = mappings(pid, binary);
  progress(`idle: ${mb(idle.rss)}`);

  progress(`${CONNECTIONS} idle connections`);
  const sockets: Socket[] = [];
  for (let i = 0; i < CONNECTIONS; i += 50) sockets.push(...(await Promise.all(Array.from({ length: Math.min(50, CONNECTIONS - i) }, () => idleClient(relay.port)))));
  await settle();
  const connected = read(pid);
  const perConnection = (connected.rss - idle.rss) / CONNECTIONS;
  for (const socket of sockets) socket.destroy();
  await settle();

  progress(`one ${mb(BIG, 0)} message`);
  // Writing 5 to clear_refs sets VmHWM back to the current resident size (proc(5)).
  writeFileSync(`/proc/${pid}/clear_refs`, '5');
  const beforeBig = read(pid);
  await smtpSource(relay, sink, 1, BIG, 1);
  const afterBig = read(pid);
  const bigPeak = afterBig.hwm - beforeBig.rss;

  progress(`steady load, ${MESSAGES} messages`);
  const curve: { messages: number; rss: number }[] = [];
  for (let sent = STEP; sent <= MESSAGES; sent += STEP) {
    await smtpSource(relay, sink, STEP, 10 * 1024, 10);
    curve.push({ messages: sent, rss: read(pid).rss });
  }
  const at = (n: number): number => curve.find((c) => c.messages === n)?.rss ?? Number.NaN;
  const flat = (at(MESSAGES) - at(2000)) / at(2000);
  await relay.stop();

  progress('what the modules hold (each imported alone)');
  // The first import of a file pays for the module loader and, for .ts, Node's type stripper: measured once, on its own.
  writeFileSync(path.join(dir, 'empty.js'), 'export const one = 1;\n');
  writeFileSync(path.join(dir, 'empty.ts'), 'export const one: number = 1;\n');
  const loader = imported('an empty .js module: the module loader', [pathToFileURL(path.join(dir, 'empty.js')).href]);
  const stripper = imported('an empty .ts module: the loader and Node\'s type stripper', [pathToFileURL(path.join(dir, 'empty.ts')).href]);
  const modules = IMPORTS.map(([what, specifiers]) => {
    const m = imported(what, specifiers);
    const base = specifiers.some((s) => s.endsWith('.ts')) ? stripper : loader;
    return { ...m, heap: m.heap - base.heap, rss: m.rss - base.rss };
  });

  progress('heap snapshot of an idle relay');
  const snapshotDir = mkdtempSync(path.join(dir, 'snapshot-'));
  const snapped = await startRelay(dir, 'rsa', 1, dns, keys, sink, { nodeFlags: ['--max-semi-space-size=8', '--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${snapshotDir}`] });
  await settle();
  const heap = summarise(await heapSnapshot(snapped.roots()[0], snapshotDir));
  await snapped.stop();

  const met = (ok: boolean): string => (ok ? 'met' : '**not met**');
  const out: string[] = [];
  out.push('## Memory', '');
  out.push(`\`npm run bench:memory\` (bench/memory.ts), ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, ${Math.round((Date.now() - started) / 1000)} s; one relay process, RSA-2048, preflight on, started through bin/hygiene-relay (Node ${process.version}, --max-semi-space-size=8). The machine (2 cores) is shared with other sessions running tests (load average ${machine} at the start); resident sizes move by a few MB between runs.`, '');
  out.push(
    table(
      ['goal', 'measured', ''],
      [
        ['idle RSS ≤ 80 MB per process', `${mb(idle.rss)} (anonymous ${mb(idle.anon)}, file-backed ${mb(idle.file)})`, met(idle.rss <= 80 * 1024 * 1024)],
        [`${fmt(CONNECTIONS)} idle connections ≤ 50 KB each`, `${fmt(perConnection / 1024, 1)} KB each (${mb(idle.rss)} → ${mb(connected.rss)})`, met(perConnection <= 50 * 1024)],
        [`a ${mb(BIG, 0)} message raises RSS by ≤ 16 MB`, `VmHWM ${mb(bigPeak)} above the RSS before it (${mb(beforeBig.rss)} → peak ${mb(afterBig.hwm)}; ${mb(afterBig.rss)} after)`, met(bigPeak <= 16 * 1024 * 1024)],
        [`RSS flat (±10%) between 2,000 and ${fmt(MESSAGES)} messages`, `${mb(at(2000))} → ${mb(at(MESSAGES))} (${flat >= 0 ? '+' : ''}${fmt(flat * 100, 1)}%)`, met(Math.abs(flat) <= 0.1)],
      ],
    ),
  );
  out.push('', `RSS under steady load (smtp-source, 10 sessions, 10 KB, in runs of ${fmt(STEP)}): ${curve.map((c) => `${fmt(c.messages)}: ${mb(c.rss, 0)}`).join(', ')}.`);
  out.push('', '### What holds the idle memory', '');
  out.push(
    table(
      ['', 'RSS', 'the node binary (file-backed)', 'other files', 'anonymous'],
      [
        ['bare `node` (launcher flags, a timer)', mb(bareReading.rss), mb(bareMaps.binary), mb(bareMaps.otherFiles), mb(bareMaps.anon)],
        ['idle relay', mb(idle.rss), mb(idleMaps.binary), mb(idleMaps.otherFiles), mb(idleMaps.anon)],
      ],
    ),
  );
  out.push('', 'Each imported alone in a fresh Node (launcher flags, `--expose-gc`), growth across the import after full collections, beyond what an empty module of the same kind costs (the first two rows; a package two others use is counted in both):', '');
  out.push(table(['module', 'heapUsed', 'RSS'], [loader, stripper, ...modules].map((m) => [m.what, mb(m.heap), mb(m.rss)])));
  out.push('', `Heap snapshot of an idle relay (\`--heapsnapshot-signal\`): ${mb(heap.total)} of objects; the biggest kinds by self size:`, '');
  out.push(table(['kind (V8 type, constructor)', 'count', 'self size'], heap.groups.slice(0, 12).map((g) => [g.name.replaceAll('|', '\\|'), fmt(g.count), mb(g.bytes)])));
  out.push('', `Module source text kept in the heap, by package: ${heap.sources.slice(0, 8).map((g) => `${g.name} ${mb(g.bytes)} (${fmt(g.count)} modules)`).join('; ')}.`);
  const text = out.join('\n');
  process.stdout.write(`${text}\n`);
  writeSection(values.out, '## Memory', text);
} finally {
  await sink.stop();
  await dns.close();
  rmSync(dir, { recursive: true, force: true });
}
