import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';

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

  /** The first bytes, for reading headers without touching the file. */
  head(limit: number): Buffer {
    return Buffer.concat(this.#chunks).subarray(0, limit);
  }

  async write(chunk: Buffer): Promise<void> {
    this.#hash.update(chunk);
    this.#size += chunk.length;
    if (this.#file) {
      await this.#file.write(chunk);
      return;
    }
    this.#chunks.push(chunk);
    if (this.#size > this.#memoryLimit) {
      this.#dir = await mkdtemp(path.join(this.#spoolDir, 'hygiene-relay-'));
      this.#fileName = path.join(this.#dir, 'message');
      // 0600: message contents are nobody else's business on a shared host.
      this.#file = await open(this.#fileName, 'wx', 0o600);
      const headKeep = this.#chunks[0];
      for (const held of this.#chunks) await this.#file.write(held);
      // Keep the first chunk so headers can still be read from memory.
      this.#chunks = [headKeep];
    }
  }

  async end(): Promise<void> {
    if (this.#file) {
      await this.#file.close();
      this.#file = undefined;
    }
  }

  /** A fresh reader of the whole message; several may read at once. */
  stream(): Readable {
    if (this.#fileName) return createReadStream(this.#fileName, { highWaterMark: 256 * 1024 });
    return Readable.from(this.#chunks, { objectMode: false });
  }

  async dispose(): Promise<void> {
    await this.#file?.close().catch(() => undefined);
    this.#file = undefined;
    if (this.#dir) await rm(this.#dir, { recursive: true, force: true });
    this.#dir = undefined;
    this.#chunks = [];
  }
}
