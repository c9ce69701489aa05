import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { BASELINE, median, SCENARIOS, type BenchResult, type Measurement } from './bench.ts';

/** The tables of a run, in markdown, and bench/RESULTS.md around them. */

const fmt = (n: number, digits = 0): string => n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
const mb = (bytes: number): string => `${fmt(bytes / 1024 / 1024)} MB`;
const ms = (n: number): string => `${fmt(n, n < 10 ? 2 : 1)} ms`;

function row(cells: string[]): string {
  return `| ${cells.join(' | ')} |`;
}

function table(head: string[], rows: string[][]): string {
  return [row(head), row(head.map(() => '---')), ...rows.map(row)].join('\n');
}

interface Cell {
  rates: number[];
  /** Per-round ratios to the baseline system; empty without it. */
  ratios: number[];
  cpuPer1000: number;
  cores: number;
  peakRss: number;
  signatures: number;
  messages: number;
  sampled: number;
  verified: number;
}

/** One system in one scenario, over the rounds. */
function cell(result: BenchResult, system: string, scenario: string): Cell | undefined {
  const runs = result.measurements.filter((m) => m.system === system && m.scenario === scenario);
  if (runs.length === 0) return undefined;
  const ratios = runs.flatMap((m) => {
    const base = result.measurements.find((b) => b.system === BASELINE && b.scenario === scenario && b.round === m.round);
    return base ? [m.rate / base.rate] : [];
  });
  const sum = (f: (m: Measurement) => number): number => runs.reduce((total, m) => total + f(m), 0);
  return {
    rates: runs.map((m) => m.rate),
    ratios,
    cpuPer1000: (sum((m) => m.cpuSeconds) / sum((m) => m.messages)) * 1000,
    cores: sum((m) => m.cpuSeconds) / sum((m) => m.seconds),
    peakRss: Math.max(...runs.map((m) => m.peakRss)),
    signatures: sum((m) => m.signatures),
    messages: sum((m) => m.messages),
    sampled: sum((m) => m.sampled),
    verified: sum((m) => m.verified),
  };
}

const ratio = (c: Cell): string => (c.ratios.length ? `${fmt(median(c.ratios), 2)}×` : '–');

export function tables(result: BenchResult): string {
  const scenarios = SCENARIOS.filter((s) => result.options.scenarios.includes(s.id));
  const out: string[] = [];

  out.push(`### msg/s, median of ${result.options.rounds} round(s) (ratio to ${result.systems.find((s) => s.id === BASELINE)?.label ?? 'Postfix + OpenDKIM (not run)'}: median of per-round ratios)`, '');
  out.push(
    table(
      ['scenario', ...result.systems.map((s) => s.label)],
      [
        ...scenarios.map((scenario) => [
          scenario.label,
          ...result.systems.map((system) => {
            const c = cell(result, system.id, scenario.id);
            return c ? `${fmt(median(c.rates))} (${ratio(c)})` : '–';
          }),
        ]),
        ...scenarios.slice(0, 1).map((scenario) => [
          `CPU s per 1,000 msgs (${scenario.label})`,
          ...result.systems.map((system) => {
            const c = cell(result, system.id, scenario.id);
            return c ? `${fmt(c.cpuPer1000, 2)} on ${fmt(c.cores, 2)} cores` : '–';
          }),
        ]),
      ],
    ),
  );

  out.push('', '### Every measurement, by scenario', '');
  out.push(
    table(
      ['scenario', 'system', 'msg/s median (min–max)', 'ratio', 'CPU s / 1,000 msgs', 'cores used', 'peak RSS', 'DKIM-Signature fields / msgs', 'verified at the sink'],
      scenarios.flatMap((scenario) =>
        result.systems.flatMap((system) => {
          const c = cell(result, system.id, scenario.id);
          if (!c) return [];
          return [
            [
              scenario.label,
              system.label,
              `${fmt(median(c.rates))} (${fmt(Math.min(...c.rates))}–${fmt(Math.max(...c.rates))})`,
              ratio(c),
              fmt(c.cpuPer1000, 2),
              fmt(c.cores, 2),
              mb(c.peakRss),
              `${fmt(c.signatures)} / ${fmt(c.messages)}`,
              system.id === 'sink' ? 'unsigned' : `${c.verified} of ${c.sampled} sampled`,
            ],
          ];
        }),
      ),
    ),
  );

  if (result.latency.length) {
    const { rate, messages } = result.latency[0];
    out.push('', `### Latency at ${fmt(rate)} msg/s (half the relay's rate), ${fmt(messages)} messages of 10 KB over 10 connections, open loop`, '');
    out.push(
      table(
        ['system', 'end of DATA → reply p50', 'p99', 'end of DATA → at the sink p50', 'p99'],
        result.latency.map((l) => [result.systems.find((s) => s.id === l.system)!.label, ms(l.reply.p50), ms(l.reply.p99), ms(l.arrival.p50), ms(l.arrival.p99)]),
      ),
    );
  }
  if (result.notes.length) out.push('', ...result.notes.map((note) => `- ${note}`));
  return out.join('\n');
}

function sh(command: string, args: string[]): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

export function machine(result: BenchResult): string[] {
  const model = /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  const quiet = result.otherCores < 0.1 ? 'quiet' : 'not quiet';
  return [
    `- CPU: ${sh('nproc', [])} × ${model}`,
    `- memory: ${fmt(os.totalmem() / 1024 ** 3, 1)} GiB; kernel ${os.release()}; Node ${process.version}`,
    `- ${result.versions ? `Postfix ${result.versions.postfix}, OpenDKIM ${result.versions.opendkim}` : 'Postfix + OpenDKIM: not run'}; smtp-source from Debian's postfix package`,
    `- temp directory (Postfix's queue) on ${sh('df', ['--output=fstype', os.tmpdir()]).split('\n').at(-1)}`,
    `- the machine was ${quiet}: other processes used ${fmt(result.otherCores, 2)} cores on average during the ${fmt(result.seconds)} s run`,
  ];
}

const BEGIN = '<!-- npm run bench: from here to the end marker, rewritten by each run -->';
const END = '<!-- end of npm run bench -->';

/**
 * Rewrites the run's part of `file`, between the markers; what others wrote around it (a
 * profile, an analysis) stays.
 */
export function writeResults(file: string, result: BenchResult, command: string): void {
  const section = [
    BEGIN,
    `## Latest run (${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC)`,
    '',
    `\`${command}\``,
    '',
    ...machine(result),
    '',
    tables(result),
    END,
  ].join('\n');
  const old = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const start = old.indexOf(BEGIN);
  const end = old.indexOf(END);
  const text =
    start >= 0 && end > start
      ? old.slice(0, start) + section + old.slice(end + END.length)
      : `# Benchmark results\n\nWritten by \`npm run bench\` (bench/run.ts); how it measures is in the README, "Benchmarks".\n\n${section}\n`;
  writeFileSync(file, text);
}
