import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync, watch } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RawClient } from './harness/client.ts';
import { RelayProcess } from './harness/process.ts';
import { Internet, message } from './harness/world.ts';

const MB = 1024 * 1024;
const REMOVED = /^spool: removed message copies/;

/** Waits, on file system events, until `ready` says yes about the directory; returns its answer. */
async function watchUntil<T>(dir: string, ready: () => T | undefined): Promise<T> {
  // Watching first, then looking: a change between the two is seen by the next look.
  const watcher = watch(dir);
  try {
    for (;;) {
      const found = ready();
      if (found !== undefined) return found;
      await once(watcher, 'change');
    }
  } finally {
    watcher.close();
  }
}

/** The spool file of the one message in `spool` once it holds at least `size` bytes. */
async function spooled(spool: string, size: number): Promise<string> {
  const dir = await watchUntil(spool, () => readdirSync(spool).find((name) => name.startsWith('hygiene-relay-')));
  const file = path.join(spool, dir, 'message');
  return watchUntil(path.join(spool, dir), () => (existsSync(file) && statSync(file).size >= size ? file : undefined));
}

/**
 * A client in the middle of DATA: the header and 5 MB of body sent (past memoryLimit, so
 * on disk), the end of data not yet. `reply` settles with what the relay answers, if ever.
 */
async function midData(port: number): Promise<{ client: RawClient; reply: Promise<unknown> }> {
  const { client } = await RawClient.connect(port);
  await client.command('EHLO corp-ex01.example.test');
  await client.command('MAIL FROM:<alice@example.test>');
  await client.command('RCPT TO:<bob@gmail.test>');
  assert.equal((await client.command('DATA')).code, 354);
  const line = 'QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3';
  const body = `${line}\r\n`.repeat(Math.ceil((5 * MB) / (line.length + 2)));
  // command() adds the CRLF that ends the last line; the "." that ends the data is not sent.
  const reply = client.command(message({ subject: 'large', body }).replace(/\r\n$/, ''));
  reply.catch(() => undefined);
  return { client, reply };
}

describe('spool files: a killed relay leaves one, the next start removes it', () => {
  let internet: Internet;
  let dir: string;
  let spool: string;
  const relays: RelayProcess[] = [];
  const start = async (name: string) => {
    const config = internet.relayConfig({
      delivery: internet.deliverySettings({ spool: { memoryLimit: '1MB', dir: spool } }),
      // No control socket and no HTTP port: two relays of this test run at once.
      control: { socket: null },
      http: null,
    });
    const relay = await RelayProcess.start(path.join(dir, `${name}.yaml`), config);
    relays.push(relay);
    return relay;
  };

  before(async () => {
    internet = await Internet.start();
    dir = mkdtempSync(path.join(tmpdir(), 'spool-sweep-'));
    spool = path.join(dir, 'spool');
    mkdirSync(spool);
  });
  after(async () => {
    await Promise.all(relays.map((relay) => relay.stop()));
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('SIGKILL during a large DATA: the client sees the connection drop, never 250; the next start removes the copy and logs it', async () => {
    const killed = await start('killed');
    const { client, reply } = await midData(killed.port);
    const file = await spooled(spool, 2 * MB);
    await killed.kill();
    // Reset (the relay's socket died with unread data) or closed: either way no reply at all, so no 250.
    await assert.rejects(reply, /ECONNRESET|connection closed/);
    await client.closed;
    const left = statSync(file).size;
    assert.ok(left >= 2 * MB, `${left} bytes left on disk`);
    // The owner's pid given to another process since (pids are reused): this test's own,
    // alive but started at another time. The start time in the name tells them apart.
    const owned = path.basename(path.dirname(file));
    assert.ok(owned.includes(`.${killed.child.pid}.`), owned);
    const reused = path.join(spool, owned.replace(`.${killed.child.pid}.`, `.${process.pid}.`));
    renameSync(path.dirname(file), reused);
    const copy = path.join(reused, 'message');

    const next = await start('next');
    const record = await next.waitFor((r) => REMOVED.test(String(r.msg)));
    assert.equal(record.level, 'warn');
    assert.deepEqual({ dir: record.dir, count: record.count, bytes: record.bytes, paths: record.paths }, { dir: spool, count: 1, bytes: left, paths: [copy] });
    assert.deepEqual(readdirSync(spool), []);
    assert.equal(internet.destination('gmail.test').received.length, 0);
  });

  it('a live relay’s spool file is left alone by another relay starting on the same directory', async () => {
    const [live] = relays.slice(-1);
    const { client, reply } = await midData(live.port);
    const file = await spooled(spool, 2 * MB);
    const other = await start('other');
    // "relay started" comes after the sweep: it has nothing to say, and the file is there.
    assert.equal(other.records.filter((r) => REMOVED.test(String(r.msg))).length, 0);
    assert.ok(existsSync(file));

    // The live relay finishes its message as if nothing happened, and removes its own copy.
    client.write('.\r\n');
    assert.equal(((await reply) as { code: number }).code, 250);
    await client.quit();
    assert.equal(internet.destination('gmail.test').received.length, 1);
    assert.deepEqual(readdirSync(spool), []);
  });
});
