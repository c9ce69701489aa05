import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/**
 * What a system cost, read from /proc the way `ps` and `top` do, so that a Node process and
 * Postfix's dozen C daemons are counted alike.
 */

const TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

interface Stat {
  ppid: number;
  /** utime + stime + cutime + cstime, in clock ticks. */
  ticks: number;
}

function stat(pid: number): Stat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined; // gone between the listing and the read
  }
  // The command name in parentheses may hold spaces: the fields start after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // proc(5): field 4 is ppid, 14–17 utime stime cutime cstime; fields[0] is field 3.
  const at = (field: number): number => Number(fields[field - 3]);
  return { ppid: at(4), ticks: at(14) + at(15) + at(16) + at(17) };
}

/** `roots` and every live process descended from one of them. */
export function tree(roots: number[]): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid)) continue;
    const ppid = stat(pid)?.ppid;
    if (ppid === undefined) continue;
    children.set(ppid, [...(children.get(ppid) ?? []), pid]);
  }
  const found = new Set<number>();
  const queue = [...roots];
  while (queue.length) {
    const pid = queue.pop()!;
    if (found.has(pid)) continue;
    found.add(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return [...found];
}

/**
 * CPU seconds of the processes of `roots`' trees, including what their children already
 * reaped had used (cutime/cstime): Postfix's master reaps an smtpd after max_use clients, and
 * that smtpd's time must stay counted. A process reaped by one of the trees is no longer in
 * it, so nothing is counted twice; a difference of two readings is the CPU spent in between.
 */
export function cpuSeconds(roots: number[]): number {
  let ticks = 0;
  for (const pid of tree(roots)) ticks += stat(pid)?.ticks ?? 0;
  return ticks / TICKS;
}

/** The sum of VmHWM (peak resident set) over the trees' live processes, in bytes. */
export function peakRss(roots: number[]): number {
  let kb = 0;
  for (const pid of tree(roots)) {
    try {
      kb += Number(/^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
    } catch {
      // gone since the listing
    }
  }
  return kb * 1024;
}

/** CPU seconds the whole machine was busy (every core, not idle or waiting for I/O), from /proc/stat. */
export function machineBusySeconds(): number {
  const [user, nice, system, , , irq, softirq, steal] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return (user + nice + system + irq + softirq + steal) / TICKS;
}
