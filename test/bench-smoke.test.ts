import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { runBench, SYSTEMS } from '../bench/bench.ts';
import { tables, writeResults } from '../bench/report.ts';
import { postfixVersions } from '../bench/systems.ts';

// `npm run bench` end to end with a few messages, so that the harness cannot rot: every
// system starts, every message reaches the sink signed as it should be and verifies there,
// and the tables have their shape. Nothing here is timed.
test('npm run bench, a few messages through every system', { timeout: 90_000 }, async (t) => {
  // Postfix + OpenDKIM where they are installed (scripts/system-deps.sh installs them when it
  // can, as on CI); installing them here would take longer than the whole smoke.
  const postfix = await postfixVersions();
  if (!postfix) t.diagnostic('Postfix + OpenDKIM are not installed (bash bench/install.sh as root): smoke without them');
  const systems = SYSTEMS.filter((id) => id !== 'postfix' || postfix);
  const result = await runBench({
    rounds: 1,
    messages: 6,
    scenarios: ['10k-10', '10k-10-new'],
    systems,
    latencyMessages: 6,
    relayWorkers: 1,
    warmup: 3,
    sampleEvery: 1,
    progress: (line) => t.diagnostic(line),
  });

  assert.deepEqual(result.systems.map((s) => s.id), systems);
  assert.equal(result.measurements.length, systems.length * 2);
  for (const m of result.measurements) {
    const signatures = m.system === 'sink' ? 0 : m.system === 'relay-dual' ? 2 : 1;
    assert.equal(m.messages, 6, `${m.system} ${m.scenario}`);
    assert.equal(m.signatures, 6 * signatures, `${m.system} ${m.scenario}: DKIM-Signature fields`);
    assert.equal(m.sampled, 6, `${m.system} ${m.scenario}: every message sampled`);
    if (signatures > 0) assert.equal(m.verified, 6, `${m.system} ${m.scenario}: ${m.failure}`);
    assert.ok(m.cpuSeconds >= 0 && m.peakRss > 0, `${m.system}: read from /proc`);
  }
  assert.deepEqual(
    result.latency.map((l) => l.system),
    systems.filter((id) => id === 'postfix' || id === 'relay-rsa' || id === 'sink'),
  );
  for (const l of result.latency) assert.ok(l.reply.p50 <= l.reply.p99 && l.arrival.p50 <= l.arrival.p99, l.system);

  const text = tables(result);
  const header = text.split('\n').find((line) => line.startsWith('| scenario | system |'));
  assert.ok(header, text);
  const columns = header.split('|').length;
  const rows = text.split('\n').filter((line) => line.startsWith('| 10 KB') && line.split('|').length === columns);
  assert.equal(rows.length, systems.length * 2, text);
  assert.match(text, /\| system \| end of DATA → reply p50 \|/);

  // The run's section is rewritten, what others wrote around it stays.
  const dir = mkdtempSync(path.join(tmpdir(), 'bench-smoke-'));
  try {
    const file = path.join(dir, 'RESULTS.md');
    writeResults(file, result, 'npm run bench -- --messages 6');
    writeFileSync(file, `${readFileSync(file, 'utf8')}\n## Profile\nkept\n`);
    writeResults(file, result, 'npm run bench -- --messages 7');
    const written = readFileSync(file, 'utf8');
    assert.match(written, /--messages 7/);
    assert.doesNotMatch(written, /--messages 6/);
    assert.match(written, /## Profile\nkept/);
    assert.match(written, /- CPU: \d+ × /);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// `npm run bench:abuse` as its own command with a few messages: the relays start (guard off,
// on with the state file, on with a Redis of its own where redis-server is installed), every
// message gets through, the guard wrote its history (the command checks), the table is
// printed and its section written beside what the file held. Nothing here is timed.
test('npm run bench:abuse, a few messages through the relay with the guard off and on', { timeout: 120_000 }, async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'bench-smoke-abuse-'));
  try {
    const file = path.join(dir, 'RESULTS.md');
    writeFileSync(file, '# Benchmark results\n\n## Memory\nkept\n');
    const args = ['--rounds', '1', '--messages', '6', '--warmup', '3', '--recipients', '2', '--out', file];
    // Without the caller's BENCH_ variables (npm run bench's, which this command reads too): the flags alone decide.
    const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('BENCH_')));
    const child = spawn(process.execPath, [path.join(import.meta.dirname, '../bench/abuse.ts'), ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const ran = { stdout: '', stderr: '', code: null as number | null };
    child.stdout.on('data', (chunk) => (ran.stdout += chunk));
    child.stderr.on('data', (chunk) => (ran.stderr += chunk));
    // Past its time, SIGTERM: the command stops its relays and redis-server before it exits.
    const timer = setTimeout(() => child.kill('SIGTERM'), 110_000);
    ran.code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    clearTimeout(timer);
    for (const line of ran.stderr.trim().split('\n')) t.diagnostic(line);
    assert.equal(ran.code, 0, ran.stderr);

    const redis = !/Redis left out/.test(ran.stdout);
    if (!redis) t.diagnostic('redis-server is not installed: smoke without the Redis column');
    const header = ran.stdout.split('\n').find((line) => line.startsWith('|  | guard off'));
    assert.ok(header, ran.stdout);
    assert.equal(header.split('|').length - 3, redis ? 3 : 2, header);
    for (const row of ['msg/s', 'recipients/s', 'relay CPU s per 1,000 messages']) assert.match(ran.stdout, new RegExp(`^\\| ${row} \\|`, 'm'), row);

    const written = readFileSync(file, 'utf8');
    assert.match(written, /^## Abuse guard cost$/m);
    assert.ok(written.includes(`\`npm run bench:abuse -- ${args.join(' ')}\``), written);
    assert.ok(written.includes(header), written);
    assert.match(written, /## Memory\nkept/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
