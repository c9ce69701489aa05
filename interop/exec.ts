import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as delay } from 'node:timers/promises';

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; killed (and reported as failed) after `timeoutMs`. */
export function run(command: string, args: string[], timeoutMs = 30_000): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (signal === 'SIGKILL') reject(new Error(`${command} ${args.join(' ')}: no exit within ${timeoutMs} ms\n${stderr}`));
      else resolve({ code, stdout, stderr });
    });
  });
}

/** Like run(), but a non-zero exit is an error carrying the command's stderr. */
export async function check(command: string, args: string[], timeoutMs?: number): Promise<string> {
  const ran = await run(command, args, timeoutMs);
  if (ran.code !== 0) throw new Error(`${command} ${args.join(' ')} exited with ${ran.code}: ${(ran.stderr || ran.stdout).trim()}`);
  return ran.stdout;
}

/**
 * Re-evaluates `condition` every 100 ms until it returns a value other than undefined or
 * false, and fails naming `what` after `timeoutMs`: the MTAs tell us about progress only
 * through their logs and queue commands, so this is how the interop waits for them.
 */
export async function until<T>(what: string, timeoutMs: number, condition: () => T | undefined | false | Promise<T | undefined | false>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await delay(100);
  }
}

/**
 * Stops a daemon started with `detached: true` and everything in its process group (Postfix's
 * master runs under postfix-script, not as the process we started): SIGTERM, then SIGKILL if
 * the process is still there after `graceMs`; resolves when it is gone.
 */
export async function stop(child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const group = -child.pid;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  process.kill(group, 'SIGTERM');
  const timer = setTimeout(() => process.kill(group, 'SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** `promise`, or an error naming `what` when it has not settled after `timeoutMs`. */
export function within<T>(what: string, timeoutMs: number, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
