import path from 'node:path';
import { parseArgs } from 'node:util';
import { runBench, SCENARIOS, SYSTEMS } from './bench.ts';
import { tables, writeResults } from './report.ts';

/**
 * `npm run bench [-- options]`: runs every system, prints the tables (markdown) on stdout,
 * progress on stderr, and rewrites the run's section of bench/RESULTS.md.
 *   --rounds N            alternating rounds (3)
 *   --messages N          messages per round and system (2000; the 1-session and 100 KB
 *                         scenarios send half)
 *   --scenarios a,b       subset of 10k-10,10k-1,10k-50,100k-10,10k-10-new (all)
 *   --systems a,b         subset of postfix,relay-rsa,relay-ed25519,relay-dual,sink (all)
 *   --latency-messages N  messages of the latency run per system (1000; 0: none)
 *   --latency-rate R      msg/s of the latency run (half the RSA relay's 10k-10 rate)
 *   --relay-workers N     the relay's `workers` setting: a number or auto (1)
 *   --warmup N            unmeasured messages per system first (500)
 *   --out FILE            where the results go (bench/RESULTS.md)
 * Each option can also come from the environment: BENCH_ROUNDS, BENCH_MESSAGES, and so on.
 */

const OPTIONS = {
  rounds: '3',
  messages: '2000',
  scenarios: SCENARIOS.map((s) => s.id).join(','),
  systems: SYSTEMS.join(','),
  'latency-messages': '1000',
  'latency-rate': '',
  'relay-workers': '1',
  warmup: '500',
  'sample-every': '100',
  out: path.join(import.meta.dirname, 'RESULTS.md'),
};
type Name = keyof typeof OPTIONS;
const names = Object.keys(OPTIONS) as Name[];
const envName = (name: string): string => `BENCH_${name.toUpperCase().replaceAll('-', '_')}`;

const { values } = parseArgs({ options: Object.fromEntries(names.map((name) => [name, { type: 'string' }])) as Record<Name, { type: 'string' }> });
const option = (name: Name): string => (values[name] as string | undefined) ?? process.env[envName(name)] ?? OPTIONS[name];
const count = (name: Name): number => {
  const n = Number(option(name));
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be a whole number, got ${option(name)}`);
  return n;
};

const result = await runBench({
  rounds: count('rounds'),
  messages: count('messages'),
  scenarios: option('scenarios').split(','),
  systems: option('systems').split(','),
  latencyMessages: count('latency-messages'),
  latencyRate: option('latency-rate') ? Number(option('latency-rate')) : undefined,
  relayWorkers: option('relay-workers') === 'auto' ? 'auto' : Math.max(1, count('relay-workers')),
  warmup: count('warmup'),
  sampleEvery: Math.max(1, count('sample-every')),
  progress: (line) => process.stderr.write(`bench: ${line}\n`),
});
// What reproduces this run: the flags given, and the BENCH_ variables that were set.
const args = process.argv.slice(2);
const env = names.filter((name) => values[name] === undefined && process.env[envName(name)] !== undefined).map((name) => `${envName(name)}=${process.env[envName(name)]} `);
const command = `${env.join('')}npm run bench${args.length ? ` -- ${args.join(' ')}` : ''}`;
process.stdout.write(`${tables(result)}\n`);
writeResults(option('out'), result, command);
process.stderr.write(`bench: results written to ${option('out')}\n`);
