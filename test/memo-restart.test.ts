import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RelayProcess } from './harness/process.ts';
import { send } from './harness/send.ts';
import { Internet, message } from './harness/world.ts';

const RECIPIENTS = ['bob@gmail.test', 'carol@outlook.test'];

/**
 * Issue 14, part 3: d1 (gmail) accepts, d2 (outlook) answers 451 at DATA, the client hears
 * "reached 1 of 2" and retries the same bytes later. Without Redis, the memo on disk
 * (memo.path, SQLite) is what keeps d1 from getting the message twice, across a relay
 * killed in between and across two relay processes of one host.
 */
describe('the delivery memo on disk, without Redis', () => {
  let internet: Internet;
  let dir: string;
  let refuse = true;
  const relays: RelayProcess[] = [];
  // No control socket and no HTTP port: two relays of this test run at once.
  const config = () => internet.relayConfig({ control: { socket: null }, http: null });
  const start = async (name: string) => {
    const relay = await RelayProcess.start(path.join(dir, `${name}.yaml`), config());
    relays.push(relay);
    return relay;
  };

  before(async () => {
    internet = await Internet.start();
    dir = mkdtempSync(path.join(tmpdir(), 'memo-restart-'));
    internet.destination('outlook.test').script = { data: () => (refuse ? { code: 451, message: '4.7.650 The mail server has been temporarily rate limited' } : undefined) };
  });
  after(async () => {
    await Promise.all(relays.map((relay) => relay.stop()));
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The first attempt: 451 naming 1 of 2, gmail has it, outlook not. */
  async function partial(relay: RelayProcess, body: string, received: { gmail: number; outlook: number }) {
    refuse = true;
    const first = await send(relay.port, 'alice@example.test', RECIPIENTS, body);
    assert.equal(first.data?.code, 451, JSON.stringify(first.data));
    assert.match(first.data!.text, /reached 1 of 2 recipients/);
    assert.equal(internet.destination('gmail.test').received.length, received.gmail + 1);
    assert.equal(internet.destination('outlook.test').received.length, received.outlook);
  }

  /** The retry: 250, gmail still has it once, outlook now has it; the record says who was skipped. */
  async function retry(relay: RelayProcess, body: string, received: { gmail: number; outlook: number }) {
    refuse = false;
    const from = relay.records.length;
    const again = await send(relay.port, 'alice@example.test', RECIPIENTS, body);
    assert.equal(again.data?.code, 250, JSON.stringify(again.data));
    assert.equal(internet.destination('gmail.test').received.length, received.gmail + 1, 'gmail got it exactly once');
    assert.equal(internet.destination('outlook.test').received.length, received.outlook + 1);
    const record = await relay.waitFor((r) => r.msg === 'transaction', from);
    assert.deepEqual((record.recipients as { result: string }[]).map((r) => r.result), ['already-delivered', 'delivered']);
  }

  const counts = () => ({ gmail: internet.destination('gmail.test').received.length, outlook: internet.destination('outlook.test').received.length });

  it('a relay killed after its 451 and started again: the retry reaches only the destination still missing', async () => {
    const body = message({ subject: 'restart' });
    const before = counts();
    const relay = await start('first');
    await partial(relay, body, before);
    // SIGKILL, not a drain: what the memo holds must be on disk when the client hears 451.
    await relay.kill();
    const restarted = await start('restarted');
    await retry(restarted, body, before);
    // The bundled Node 24 loads node:sqlite without an ExperimentalWarning; nothing else goes to stderr either.
    assert.equal(restarted.stderr, '');
  });

  it('two relay processes on one host share it: a retry that lands on the other one', async () => {
    const body = message({ subject: 'two processes' });
    const before = counts();
    const [one, two] = await Promise.all([start('one'), start('two')]);
    await partial(one, body, before);
    await retry(two, body, before);
  });
});
