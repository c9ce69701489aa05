import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify } from 'yaml';
import { controlRequest } from '../src/control/index.ts';
import { hashPassword } from '../src/inbound/index.ts';
import { RawClient } from './harness/client.ts';
import { RelayProcess } from './harness/process.ts';
import { parseExposition, type Sample } from './harness/prometheus.ts';
import { send } from './harness/send.ts';
import { GMAIL, Internet, message, OUTLOOK } from './harness/world.ts';

const plain = (user: string, password: string) => `AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`;

function sample(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  assert.ok(samples.some((s) => s.name === name), `${name} is exposed`);
  return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((sum, s) => sum + s.value, 0);
}

/** An IPv4 address and port as /proc/net/tcp writes them: the address's bytes in host (little-endian) order, in hex. */
function procAddress(ip: string, port?: number): string {
  const hex = ip.split('.').reverse().map((b) => Number(b).toString(16).padStart(2, '0')).join('').toUpperCase();
  return port === undefined ? `${hex}:` : `${hex}:${port.toString(16).toUpperCase().padStart(4, '0')}`;
}

/** Which of `pids` holds the relay's end (on `relayPort`) of the one connection from `clientIp`. */
function holder(pids: number[], relayPort: number, clientIp: string): number {
  const rows = readFileSync('/proc/net/tcp', 'utf8').trim().split('\n').slice(1).map((line) => line.trim().split(/\s+/));
  const row = rows.find(([, local, remote]) => local === procAddress('127.0.0.1', relayPort) && remote.startsWith(procAddress(clientIp)));
  assert.ok(row, `a connection from ${clientIp} to port ${relayPort}`);
  const socket = `socket:[${row[9]}]`;
  const found = pids.find((pid) => readdirSync(`/proc/${pid}/fd`).some((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`) === socket;
    } catch {
      return false; // closed while looked at
    }
  }));
  assert.ok(found, `a worker holds ${socket}`);
  return found;
}

describe('workers: 2, under one supervisor', () => {
  let internet: Internet;
  let dir: string;
  let file: string;
  let config: Record<string, unknown>;
  let relay: RelayProcess;
  let http: number;

  const get = async (url: string) => {
    const response = await fetch(`http://127.0.0.1:${http}${url}`);
    return { status: response.status, body: await response.text() };
  };
  /** Worker ids that wrote records matching `match`, from record `index` on. */
  const workersOf = (match: (r: Record<string, unknown>) => boolean, index = 0) => new Set(relay.records.slice(index).filter(match).map((r) => r.worker));
  const pids = () => {
    const exited = new Set(relay.records.filter((r) => r.msg === 'worker exited unexpectedly: starting another').map((r) => r.pid));
    return relay.records.filter((r) => r.msg === 'worker forked' && !exited.has(r.pid)).map((r) => r.pid as number);
  };

  before(async () => {
    internet = await Internet.start({ destinations: [GMAIL, OUTLOOK] });
    dir = mkdtempSync(path.join(tmpdir(), 'relay-workers-'));
    file = path.join(dir, 'relay.yaml');
    config = internet.relayConfig({
      workers: 2,
      listeners: [{ host: '127.0.0.1', port: 0, allowInsecureAuth: true }],
      clients: { networks: ['127.0.0.1/32', '127.0.6.0/24'], users: [{ name: 'mdaemon', password: await hashPassword('correct horse') }] },
      limits: { authFailures: { perAddress: 10, perUser: 3, window: '1m', block: '1m' }, strangers: { total: 1, perAddress: 1 } },
      control: { socket: path.join(dir, 'control.sock') },
      // Six messages a minute to Gmail for the whole relay; outlook.test is no provider, unlimited.
      delivery: internet.deliverySettings({ providers: { gmail: { mx: ['gmail.test'], messagesPerMinute: 6 } } }),
    });
    relay = await RelayProcess.start(file, config);
    http = relay.records.find((r) => r.msg === 'relay started')!.httpPort as number;
  });
  after(async () => {
    await relay.stop();
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('forks two workers that share the port; messages relay through both, and /metrics sums them', async () => {
    assert.equal(pids().length, 2);
    assert.deepEqual(relay.records.find((r) => r.msg === 'relay started')!.workers, 2);
    for (let i = 0; i < 4; i++) assert.equal((await send(relay.port, 'alice@example.test', ['bob@gmail.test'], message())).data?.code, 250);
    await relay.waitFor(() => relay.records.filter((r) => r.msg === 'transaction').length === 4);
    assert.equal(workersOf((r) => r.msg === 'transaction').size, 2, 'connections are handed to the workers in turn');
    const families = await parseExposition((await get('/metrics')).body);
    assert.equal(sample(families, 'hygiene_relay_transactions_total', { outcome: 'accepted' }), 4);
    assert.equal(sample(families, 'hygiene_relay_workers'), 2);
    assert.equal(sample(families, 'hygiene_relay_egress_usable'), 1, 'a gauge every worker sets alike is not summed');
    assert.deepEqual(JSON.parse((await get('/readyz')).body), { status: 'ready', problems: [], degraded: [] });
    // The control socket reaches every worker: the second flush finds nothing left in any.
    assert.match(await controlRequest(path.join(dir, 'control.sock'), 'dns flush'), /^ok DNS cache flushed: [1-9]\d* in-process answers$/);
    assert.equal(await controlRequest(path.join(dir, 'control.sock'), 'dns flush'), 'ok DNS cache flushed: 0 in-process answers');
  });

  it("keeps a provider's rate across workers: of 4 more messages to Gmail, 2 are over its 6 a minute", async () => {
    const replies = [];
    for (let i = 0; i < 4; i++) replies.push((await send(relay.port, 'alice@example.test', ['bob@gmail.test'], message())).rcpts[0]);
    assert.deepEqual(replies.map((r) => r.code), [250, 250, 451, 451]);
    assert.match(replies[3].text, /^4\.7\.0 gmail takes at most 6 messages a minute from 127\.0\.0\.2/);
  });

  it('counts AUTH failures across workers: the third, wherever it lands, blocks the user', async () => {
    const mark = relay.records.length;
    const attempt = async (secret: string, i: number) => {
      const { client } = await RawClient.connect(relay.port, { localAddress: `127.0.6.${10 + i}` });
      try {
        await client.command('EHLO corp-ex01.example.test');
        return await client.command(plain('mdaemon', secret));
      } finally {
        client.destroy();
      }
    };
    for (let i = 0; i < 3; i++) assert.equal((await attempt(`guess ${i}`, i)).code, 535);
    assert.equal((await attempt('correct horse', 3)).code, 454);
    assert.equal(workersOf((r) => r.msg === 'refused' && r.stage === 'AUTH', mark).size, 2, 'the attempts landed on both workers');
  });

  it('holds strangers.total across workers: one stranger connection in all, not one per worker', async () => {
    const mark = relay.records.length;
    const connections = [];
    try {
      for (let i = 1; i <= 4; i++) connections.push(await RawClient.connect(relay.port, { localAddress: `127.0.5.${i}` }));
      const greetings = connections.map(({ greeting }) => `${greeting.code} ${greeting.text}`);
      assert.equal(greetings.filter((g) => g.startsWith('220 ')).length, 1, greetings.join('\n'));
      assert.equal(greetings.filter((g) => g === '421 4.7.0 too many connections from outside the trusted networks, try again later').length, 3, greetings.join('\n'));
      assert.equal(workersOf((r) => r.msg === 'refused' && r.stage === 'session', mark).size, 2, 'refused by both workers');
    } finally {
      for (const { client } of connections) client.destroy();
    }
  });

  it('SIGHUP: the supervisor checks the file first (a broken one changes nothing), then every worker reloads once and the checks run once', async () => {
    writeFileSync(file, stringify({ ...config, limits: { maxRecipients: 'many' } }));
    let mark = relay.records.length;
    relay.child.kill('SIGHUP');
    const refused = await relay.waitFor((r) => r.msg === 'reload refused: the running configuration stays in use', mark);
    assert.equal(refused.worker, undefined, 'refused by the supervisor');
    assert.match(String(refused.error), /limits\.maxRecipients/);
    writeFileSync(file, stringify(config));
    const between = relay.records.slice(mark);
    mark = relay.records.length;
    relay.child.kill('SIGHUP');
    await relay.waitFor(() => workersOf((r) => r.msg === 'configuration reloaded', mark).size === 2, mark);
    await relay.waitFor((r) => String(r.msg).startsWith('DNS checks:'), mark);
    assert.ok(!between.some((r) => r.msg === 'configuration reloaded'));
    assert.equal(relay.records.slice(mark).filter((r) => r.msg === 'configuration reloaded').length, 2);
    assert.equal(relay.records.slice(mark).filter((r) => String(r.msg).startsWith('DNS checks:')).length, 1);
  });

  it('a worker SIGKILLed during DATA: its client sees the connection drop, never a 250; another worker is started and mail relays', async () => {
    const delivered = internet.destination('outlook.test').received.length;
    const { client } = await RawClient.connect(relay.port, { localAddress: '127.0.6.1' });
    await client.command('EHLO corp-ex01.example.test');
    assert.equal((await client.command('MAIL FROM:<alice@example.test>')).code, 250);
    assert.equal((await client.command('RCPT TO:<dave@outlook.test>')).code, 250);
    assert.equal((await client.command('DATA')).code, 354);
    client.write(message({ to: 'dave@outlook.test', subject: 'in flight' }).replace(/Hello Bob\.\r\n$/, 'first half\r\n'));
    const victim = holder(pids(), relay.port, '127.0.6.1');
    const mark = relay.records.length;
    const killed = Date.now();
    process.kill(victim, 'SIGKILL');
    await assert.rejects(client.reply(), /connection closed/);
    await client.closed;
    const exited = await relay.waitFor((r) => r.msg === 'worker exited unexpectedly: starting another', mark);
    assert.deepEqual([exited.pid, exited.signal, exited.code], [victim, 'SIGKILL', null]);
    const forked = await relay.waitFor((r) => r.msg === 'worker forked', mark);
    await relay.waitFor((r) => r.msg === 'worker started' && r.worker === forked.worker, mark);
    assert.ok(Date.now() - killed < 10_000, 'replaced within seconds');
    assert.equal(pids().length, 2);
    assert.deepEqual(JSON.parse((await get('/readyz')).body), { status: 'ready', problems: [], degraded: [] });
    for (let i = 0; i < 2; i++) assert.equal((await send(relay.port, 'alice@example.test', ['dave@outlook.test'], message({ to: 'dave@outlook.test' }))).data?.code, 250);
    const received = await internet.destination('outlook.test').waitForMessages(delivered + 2);
    assert.ok(!received.some((m) => m.message.includes('in flight')), 'the cut message reached nobody');
  });

  it('backs off a worker that keeps dying: the second death within 30 s waits 1 s, and /readyz is unready meanwhile', async () => {
    const forked = relay.records.filter((r) => r.msg === 'worker forked').at(-1)!;
    const mark = relay.records.length;
    process.kill(forked.pid as number, 'SIGKILL');
    const exited = await relay.waitFor((r) => r.msg === 'worker exited unexpectedly: starting another', mark);
    assert.equal(exited.restartIn, '1s');
    const unready = await get('/readyz');
    assert.equal(unready.status, 503);
    assert.deepEqual(JSON.parse(unready.body).problems, ['1 of 2 workers running']);
    const replacement = await relay.waitFor((r) => r.msg === 'worker forked', mark);
    await relay.waitFor((r) => r.msg === 'worker started' && r.worker === replacement.worker, mark);
    assert.equal((await get('/readyz')).status, 200);
    const families = await parseExposition((await get('/metrics')).body);
    assert.equal(sample(families, 'hygiene_relay_worker_restarts_total'), 2);
  });

  it('SIGTERM: every worker drains, then the supervisor exits 0', async () => {
    const mark = relay.records.length;
    assert.equal(await relay.stop(), 0);
    const after = relay.records.slice(mark);
    assert.equal(new Set(after.filter((r) => r.msg === 'stopped').map((r) => r.worker)).size, 2);
    assert.equal(after[after.length - 1].msg, 'every worker has exited');
  });
});

describe('workers: a worker that cannot start', () => {
  it('stops the start: its one line on stderr, and its exit code', async () => {
    const internet = await Internet.start({ destinations: [GMAIL] });
    const dir = mkdtempSync(path.join(tmpdir(), 'relay-workers-'));
    try {
      const config = internet.relayConfig({ workers: 2, domains: { 'example.test': { dkim: [{ selector: 's1', key: path.join(dir, 'missing.pem') }] } } });
      await assert.rejects(RelayProcess.start(path.join(dir, 'relay.yaml'), config), /relay exited with 2: hygiene-relay: config error: .*relay\.yaml: .*missing\.pem/);
    } finally {
      await internet.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
