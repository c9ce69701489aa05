import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { stringify } from 'yaml';

const BIN = path.resolve(import.meta.dirname, '../../bin/hygiene-relay.ts');
/** What an admin starts (and systemd, and the container): the launcher, with its Node flags. */
const LAUNCHER = path.resolve(import.meta.dirname, '../../bin/hygiene-relay');

export interface RelayProcessOptions {
  /**
   * Its standard output is text (log.format pretty or line), not JSON records: each line is
   * kept in `lines` only, and the relay has started at the first that says "relay started".
   * Its port is then the first listener's, so give that one a free port, not 0.
   */
  text?: boolean;
}

/** The relay as its own process, started from a YAML file like an admin would start it. */
export class RelayProcess {
  readonly child: ChildProcess;
  readonly port: number;
  readonly records: Record<string, unknown>[];
  /** Every line of its standard output, as written. */
  readonly lines: string[];
  #waiters: { match: (r: Record<string, unknown>) => boolean; resolve: (r: Record<string, unknown>) => void }[] = [];
  #lineWaiters: { match: (line: string) => boolean; resolve: (line: string) => void }[] = [];
  #stderr: () => string;

  private constructor(child: ChildProcess, port: number, records: Record<string, unknown>[], lines: string[], input: ReturnType<typeof createInterface>, text: boolean, stderr: () => string) {
    this.child = child;
    this.#stderr = stderr;
    this.port = port;
    this.records = records;
    this.lines = lines;
    input.on('line', (line) => {
      this.#lineWaiters = this.#lineWaiters.filter((w) => (w.match(line) ? (w.resolve(line), false) : true));
      if (text) return;
      const record = records[records.length - 1];
      this.#waiters = this.#waiters.filter((w) => (w.match(record) ? (w.resolve(record), false) : true));
    });
  }

  /** Everything written to its standard error so far (Node's own warnings land there). */
  get stderr(): string {
    return this.#stderr();
  }

  /** The first line of standard output from `index` on that matches, already written or still to come. */
  waitForLine(match: (line: string) => boolean, index = 0): Promise<string> {
    const found = this.lines.slice(index).find(match);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve) => this.#lineWaiters.push({ match, resolve }));
  }

  /** The first log record from `index` on that matches, already written or still to come. */
  waitFor(match: (r: Record<string, unknown>) => boolean, index = 0): Promise<Record<string, unknown>> {
    const found = this.records.slice(index).find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve) => this.#waiters.push({ match, resolve }));
  }

  static async start(configFile: string, config: Record<string, unknown>, options: RelayProcessOptions = {}): Promise<RelayProcess> {
    writeFileSync(configFile, stringify(config));
    const child = spawn(LAUNCHER, ['start', '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    const records: Record<string, unknown>[] = [];
    const lines: string[] = [];
    let stderr = '';
    child.stderr!.on('data', (chunk) => (stderr += chunk));
    const input = createInterface({ input: child.stdout! });
    const port = await new Promise<number>((resolve, reject) => {
      input.on('line', (line) => {
        lines.push(line);
        if (options.text) {
          if (line.includes('relay started')) resolve((config.listeners as { port: number }[])[0].port);
          return;
        }
        const record = JSON.parse(line) as Record<string, unknown>;
        records.push(record);
        if (record.msg === 'relay started') resolve((record.ports as number[])[0]);
      });
      child.once('exit', (code) => reject(new Error(`relay exited with ${code}: ${stderr}`)));
    });
    return new RelayProcess(child, port, records, lines, input, options.text ?? false, () => stderr);
  }

  /** A line of /proc/PID/status in bytes (VmRSS: resident now, VmHWM: the peak so far). */
  memory(field: 'VmRSS' | 'VmHWM'): number {
    const status = readFileSync(`/proc/${this.child.pid}/status`, 'utf8');
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
    if (!match) throw new Error(`no ${field} in /proc/${this.child.pid}/status`);
    return Number(match[1]) * 1024;
  }

  /** SIGKILL, as a crash or the OOM killer: no drain, nothing cleaned up. */
  async kill(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGKILL');
    await exited;
  }

  async stop(): Promise<number | null> {
    // Already gone (exited, or killed: then exitCode stays null and signalCode says why).
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.child.exitCode;
    const exited = new Promise<number | null>((resolve) => this.child.once('exit', (code) => resolve(code)));
    this.child.kill('SIGTERM');
    return exited;
  }
}

/** Runs the CLI to completion: exit code, stdout and stderr. */
export function runCli(args: string[], input?: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.stdin.end(input ?? '');
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}
