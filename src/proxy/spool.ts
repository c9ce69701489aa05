import { createHash } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { mkdtemp, open, readdir, rm, stat, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Logger } from '../observability/index.ts';

// smtp-server hands over message data in pieces as small as one line (it splits at every
// dot-stuffed line); writing each as it comes would cost a system call per line.
const WRITE_BLOCK = 256 * 1024;
const READ_BLOCK = 64 * 1024;

/**
 * Who owns a spool directory, in its name, so that a relay starting on the same directory
 * (or another worker of the host) can tell a live owner's files from a dead one's: the pid
 * and that process's start time, since pids are reused (proc(5), /proc/<pid>/stat field 22,
 * in clock ticks since boot); the boot, since a reboot ends every process and restarts the
 * clock; the PID namespace, since pids of another one (a container sharing the directory)
 * mean nothing here. Where /proc is missing (not Linux), they are "x" and liveness is asked
 * with signal 0.
 */
interface Owner {
  boot: string;
  namespace: string;
  pid: number;
  start: string;
}

const UNKNOWN = 'x';

function readOr(read: () => string): string {
  try {
    return read();
  } catch {
    return UNKNOWN;
  }
}

function startTime(pid: number): string {
  return readOr(() => {
    const line = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2, the command in parentheses, may itself hold spaces and parentheses: count from after it (field 3 on).
    return line.slice(line.lastIndexOf(')') + 2).split(' ')[22 - 3];
  });
}

let self: Owner | undefined;
function me(): Owner {
  self ??= {
    boot: readOr(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim().replaceAll('-', '')),
    // "pid:[4026531836]": the namespace's inode number identifies it.
    namespace: readOr(() => /\d+/.exec(readlinkSync('/proc/self/ns/pid'))![0]),
    pid: process.pid,
    start: startTime(process.pid),
  };
  return self;
}

const PREFIX = 'hygiene-relay-';
/** hygiene-relay-<boot>.<namespace>.<pid>.<start>-XXXXXX, the suffix mkdtemp's six characters. */
const OWNED = /^hygiene-relay-(\w+)\.(\w+)\.(\d+)\.(\w+)-[\w]{6}$/;
/** Before owners were named (until issue 14): nothing tells whose it was, and no relay of this version makes one. */
const LEGACY = /^hygiene-relay-[\w]{6}$/;
const FILE = 'message';

function ownerOf(name: string): Owner | 'legacy' | undefined {
  const owned = OWNED.exec(name);
  if (owned) return { boot: owned[1], namespace: owned[2], pid: Number(owned[3]), start: owned[4] };
  return LEGACY.test(name) ? 'legacy' : undefined;
}

function alive(owner: Owner): boolean {
  if (owner.start !== UNKNOWN) return startTime(owner.pid) === owner.start;
  try {
    process.kill(owner.pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists, under another user.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Another namespace's owner cannot be looked up from here: its files are left alone. */
function stale(owner: Owner | 'legacy'): boolean {
  if (owner === 'legacy') return true;
  const here = me();
  if (owner.boot !== here.boot) return true;
  if (owner.namespace !== here.namespace) return false;
  return !alive(owner);
}

/**
 * At start, before the listeners open: removes the spool directories whose owner is no
 * longer running (a relay killed in the middle of a large message leaves its copy behind;
 * nothing else ever removes it), and says in one record what went. Only directories in
 * the spool's own shape (the name, and nothing in them but the message) are touched: the
 * default spool directory is the system's temporary directory, shared with everything else.
 */
export async function sweepSpool(dir: string | undefined, logger: Logger): Promise<void> {
  const spoolDir = dir ?? tmpdir();
  let names: string[];
  try {
    names = await readdir(spoolDir);
  } catch (err) {
    // No directory yet: nothing was left in it (a large message will say what is wrong).
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const removed: string[] = [];
  const failed: { path: string; error: string }[] = [];
  let bytes = 0;
  for (const name of names) {
    if (!name.startsWith(PREFIX)) continue;
    const owner = ownerOf(name);
    if (!owner || !stale(owner)) continue;
    const where = path.join(spoolDir, name);
    try {
      const inside = await readdir(where);
      if (inside.some((entry) => entry !== FILE)) continue;
      const size = inside.length ? (await stat(path.join(where, FILE))).size : 0;
      await rm(where, { recursive: true });
      // Empty: killed between making the directory and the file.
      removed.push(inside.length ? path.join(where, FILE) : where);
      bytes += size;
    } catch (err) {
      // Not a directory, or another user's (the temporary directory is shared): not ours to remove.
      if ((err as NodeJS.ErrnoException).code !== 'ENOTDIR') failed.push({ path: where, error: (err as NodeJS.ErrnoException).code ?? (err as Error).message });
    }
  }
  if (removed.length === 0 && failed.length === 0) return;
  logger.warn(
    { dir: spoolDir, count: removed.length, bytes, paths: removed.slice(0, 20), ...(failed.length && { failed }) },
    'spool: removed message copies left by relays that are no longer running (killed during DATA)',
  );
}

/**
 * The message as the client sent it, held until every destination has it: in memory up to
 * `memoryLimit`, then in a private temporary file that `dispose()` removes. Only a relay that
 * dies before then (SIGKILL, a crash, power lost) leaves the file, and the next one started
 * on the directory removes it (`sweepSpool`). The SHA-256 of the bytes is computed while they
 * stream in; it keys the delivery memo.
 */
export class Spool {
  #chunks: Buffer[] = [];
  #size = 0;
  #hash = createHash('sha256');
  #digest?: string;
  #dir?: string;
  #file?: FileHandle;
  /** Small chunks waiting to go to the file together: one write per block, not per line. */
  #pending: Buffer[] = [];
  #pendingSize = 0;
  #fileName?: string;
  #memoryLimit: number;
  #spoolDir: string;

  constructor(memoryLimit: number, spoolDir = tmpdir()) {
    this.#memoryLimit = memoryLimit;
    this.#spoolDir = spoolDir;
  }

  get size(): number {
    return this.#size;
  }

  get sha256(): string {
    this.#digest ??= this.#hash.digest('hex');
    return this.#digest;
  }

  /** Where the message lives while it waits, for the log. */
  get onDisk(): boolean {
    return this.#fileName !== undefined;
  }

  async write(chunk: Buffer): Promise<void> {
    this.#hash.update(chunk);
    this.#size += chunk.length;
    if (this.#file) {
      this.#pending.push(chunk);
      this.#pendingSize += chunk.length;
      if (this.#pendingSize >= WRITE_BLOCK) await this.#flush();
      return;
    }
    this.#chunks.push(chunk);
    if (this.#size > this.#memoryLimit) {
      const owner = me();
      this.#dir = await mkdtemp(path.join(this.#spoolDir, `${PREFIX}${owner.boot}.${owner.namespace}.${owner.pid}.${owner.start}-`));
      this.#fileName = path.join(this.#dir, 'message');
      // 0600: message contents are nobody else's business on a shared host.
      this.#file = await open(this.#fileName, 'wx', 0o600);
      await this.#file.writev(this.#chunks);
      this.#chunks = [];
    }
  }

  async #flush(): Promise<void> {
    const pending = this.#pending;
    this.#pending = [];
    this.#pendingSize = 0;
    if (pending.length) await this.#file!.writev(pending);
  }

  async end(): Promise<void> {
    if (this.#file) {
      await this.#flush();
      await this.#file.close();
      this.#file = undefined;
    }
  }

  /**
   * A fresh reader of the message from byte `offset` on; several may read at once. With
   * `reuse`, a file is read through one buffer per reader, reused for every chunk: the
   * consumer must be done with a chunk before it asks for the next (the upstream session
   * is: it waits until each chunk has left for the kernel), so a large message does not
   * leave megabytes of garbage behind. A consumer that keeps chunks gets fresh ones.
   */
  async *chunks(offset = 0, options: { reuse: boolean } = { reuse: true }): AsyncGenerator<Buffer> {
    if (!this.#fileName) {
      let skip = offset;
      for (const chunk of this.#chunks) {
        if (skip >= chunk.length) {
          skip -= chunk.length;
          continue;
        }
        yield skip ? chunk.subarray(skip) : chunk;
        skip = 0;
      }
      return;
    }
    const file = await open(this.#fileName, 'r');
    try {
      let position = offset;
      let buffer = Buffer.allocUnsafe(READ_BLOCK);
      for (;;) {
        const { bytesRead } = await file.read(buffer, 0, buffer.length, position);
        if (bytesRead === 0) return;
        position += bytesRead;
        yield buffer.subarray(0, bytesRead);
        if (!options.reuse) buffer = Buffer.allocUnsafe(READ_BLOCK);
      }
    } finally {
      await file.close();
    }
  }

  async dispose(): Promise<void> {
    await this.#file?.close().catch(() => undefined);
    this.#file = undefined;
    if (this.#dir) await rm(this.#dir, { recursive: true, force: true });
    this.#dir = undefined;
    this.#chunks = [];
  }
}
