import { createHash } from 'node:crypto';
import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

// smtp-server hands over message data in pieces as small as one line (it splits at every
// dot-stuffed line); writing each as it comes would cost a system call per line.
const WRITE_BLOCK = 256 * 1024;
const READ_BLOCK = 64 * 1024;

/**
 * The message as the client sent it, held until every destination has it: in memory up to
 * `memoryLimit`, then in a private temporary file that `dispose()` always removes. The
 * SHA-256 of the bytes is computed while they stream in; it keys the delivery memo.
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
      this.#dir = await mkdtemp(path.join(this.#spoolDir, 'hygiene-relay-'));
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
