import { watch } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { stringify } from 'yaml';
import { recordLine, transactionLine } from '../observability/index.ts';
import { fail, HELP_HELP, parseOptions, usageError, type Command } from './common.ts';

const LOGS: Command = {
  name: 'logs',
  usage: `usage: hygiene-relay logs [FILE|-] [--follow] [--since 30m|1h|2d] [--grep TEXT] [--id RELAYID]

Reads the relay's JSON records (log.format: json) from FILE, or standard input when FILE
is - or absent, and prints one line per transaction: time, relay id, client, sender →
each recipient with its result and the destination's reply code, the predicted DMARC
result, and the reply the client got at the end; and the abuse guard's records (a sender
over a limit, flagged, held or released), one line each. Lines that are not JSON records are
skipped and counted on standard error.

options:
  -f, --follow        keep reading FILE as it grows (like tail -f) until Ctrl-C
  --since DURATION    only transactions of the last 30s, 30m, 1h, 2d…
  --grep TEXT         only transactions whose record contains TEXT
  --id RELAYID        that transaction whole: every field, indented (exit 1 if absent)
${HELP_HELP}
`,
};

/** A record is 2–3 KB; a longer "line" is not one of the relay's records, and is not held in memory whole. */
const MAX_LINE = 1024 * 1024;
const CHUNK = 64 * 1024;

/** "30s", "30m", "1h", "2d": how far back `--since` reaches, in milliseconds. */
function sinceMs(text: string): number {
  const match = /^(\d+)(s|m|h|d)$/.exec(text);
  if (!match) usageError(LOGS, `--since must be a duration such as 30m, 1h or 2d, not "${text}"`);
  return Number(match[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match[2] as 's' | 'm' | 'h' | 'd'];
}

/** A file's bytes as they are now, then, with `follow`, as they are appended (like `tail -f`), until `signal`. */
async function* fileChunks(file: string, handle: FileHandle, follow: boolean, signal: AbortSignal): AsyncGenerator<Buffer> {
  // Watching starts before the first read, and a change seen while reading means reading
  // again before waiting: an append is never missed between reaching the end and waiting.
  let changed = false;
  let wake: (() => void) | undefined;
  const watcher = follow ? watch(file, { signal }, () => ((changed = true), wake?.())) : undefined;
  signal.addEventListener('abort', () => wake?.());
  let position = 0;
  try {
    for (;;) {
      changed = false;
      for (;;) {
        const buffer = Buffer.alloc(CHUNK);
        const { bytesRead } = await handle.read(buffer, 0, CHUNK, position);
        if (bytesRead === 0) break;
        position += bytesRead;
        yield buffer.subarray(0, bytesRead);
      }
      if (!watcher) return;
      // Truncated in place (logrotate's copytruncate): read it again from the start, as tail does.
      if ((await handle.stat()).size < position) {
        position = 0;
        continue;
      }
      if (!changed && !signal.aborted) await new Promise<void>((resolve) => (wake = resolve));
      wake = undefined;
      if (signal.aborted) return;
    }
  } finally {
    watcher?.close();
  }
}

/**
 * Lines of the input; null for a line longer than MAX_LINE (its bytes are dropped as they
 * come). While following, a last line without its line end is still being written: it
 * waits for the rest.
 */
async function* lines(chunks: AsyncIterable<Buffer>, complete: boolean): AsyncGenerator<string | null> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let overlong = false;
  for await (const chunk of chunks) {
    let start = 0;
    for (let end = chunk.indexOf(10); end !== -1; end = chunk.indexOf(10, start)) {
      const piece = chunk.subarray(start, end);
      yield overlong || pendingBytes + piece.length > MAX_LINE ? null : Buffer.concat([...pending, piece]).toString('utf8');
      [pending, pendingBytes, overlong] = [[], 0, false];
      start = end + 1;
    }
    const rest = chunk.subarray(start);
    if (overlong || rest.length === 0) continue;
    if (pendingBytes + rest.length > MAX_LINE) [pending, pendingBytes, overlong] = [[], 0, true];
    else [pending, pendingBytes] = [[...pending, Buffer.from(rest)], pendingBytes + rest.length];
  }
  if (complete && (overlong || pendingBytes > 0)) yield overlong ? null : Buffer.concat(pending).toString('utf8');
}

function parseRecord(line: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(line);
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** `--id`: the transaction's summary, then every field, indented. */
function whole(record: Record<string, unknown>): string {
  return `${transactionLine(record)}\n${stringify(record, { lineWidth: 0 })}`;
}

/** `logs`: the relay's JSON records (a file, or standard input) as one line per transaction. */
export async function logs(args: string[]): Promise<void> {
  const { values, positionals } = parseOptions(args, LOGS, { follow: { type: 'boolean', short: 'f' }, since: { type: 'string' }, grep: { type: 'string' }, id: { type: 'string' } }, true);
  if (positionals.length > 1) usageError(LOGS, `logs reads one file, not ${positionals.length}`);
  const since = values.since === undefined ? undefined : Date.now() - sinceMs(values.since);
  const file = positionals[0] ?? '-';

  // `hygiene-relay logs … | head` closes the pipe early: that is the end, not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  let handle: FileHandle | undefined;
  if (file !== '-') {
    try {
      handle = await open(file, 'r');
    } catch (err) {
      fail(`cannot read ${file}: ${(err as Error).message}`, 2);
    }
  }
  // Standard input is read to its end whether or not it grows: --follow is for a file.
  const follow = Boolean(values.follow) && handle !== undefined;
  const stop = new AbortController();
  if (follow) {
    // Ctrl-C (or SIGTERM) ends a --follow cleanly, with the closing note.
    process.once('SIGINT', () => stop.abort());
    process.once('SIGTERM', () => stop.abort());
  }
  const chunks = handle ? fileChunks(file, handle, follow, stop.signal) : (process.stdin as AsyncIterable<Buffer>);

  let skipped = 0;
  let found = 0;
  try {
    for await (const line of lines(chunks, !follow)) {
      if (line !== null && line.trim() === '') continue;
      const record = line === null ? undefined : parseRecord(line);
      if (!record) {
        skipped++;
        continue;
      }
      // The abuse guard's records too: a held or flagged mailbox is what an admin must not miss.
      const abuse = record.msg === 'abuse' || record.msg === 'abuse released';
      if (record.msg !== 'transaction' && !abuse) continue;
      if (values.id !== undefined) {
        if (abuse) continue;
        if (record.id !== values.id) continue;
        process.stdout.write(`${found ? '\n' : ''}${whole(record)}`);
        found++;
        continue;
      }
      if (since !== undefined && !(Date.parse(String(record.time)) >= since)) continue;
      if (values.grep !== undefined && !line!.includes(values.grep)) continue;
      process.stdout.write(`${abuse ? recordLine(record) : transactionLine(record)}\n`);
      found++;
    }
  } catch (err) {
    fail(`cannot read ${file === '-' ? 'standard input' : file}: ${(err as Error).message}`, 2);
  } finally {
    await handle?.close();
  }
  if (skipped) process.stderr.write(`hygiene-relay: skipped ${skipped} line${skipped === 1 ? '' : 's'} that ${skipped === 1 ? 'is' : 'are'} not a JSON record\n`);
  if (values.id !== undefined && !found) fail(`no transaction with relay id ${values.id}`, 1);
}
