import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RawClient } from './harness/client.ts';
import { parseExposition, type Sample } from './harness/prometheus.ts';
import { makeKey } from './harness/dkim.ts';
import { RelayProcess } from './harness/process.ts';
import { RedisServer } from './harness/redis.ts';
import { send } from './harness/send.ts';
import { freePort, GMAIL, Internet, message, OUTLOOK } from './harness/world.ts';

const MB = 1024 * 1024;

async function get(port: number, path: string): Promise<{ status: number; body: string; type: string | null }> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: response.status, body: await response.text(), type: response.headers.get('content-type') };
}

function httpPort(relay: RelayProcess): number {
  return relay.records.find((r) => r.msg === 'relay started')!.httpPort as number;
}

/** The sum of the samples called `name` whose labels include `labels`; the family must be exposed. */
function sample(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  assert.ok(samples.some((s) => s.name === name), `${name} is exposed`);
  const matching = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return matching.reduce((sum, s) => sum + s.value, 0);
}

describe('metrics, on a relay that relayed a few messages', () => {
  let internet: Internet;
  let relay: RelayProcess;
  let dir: string;
  let families: Sample[];
  let text: string;
  before(async () => {
    internet = await Internet.start({ destinations: [GMAIL, { ...OUTLOOK, script: { data: () => ({ code: 451, message: '4.7.0 try again later' }) } }] });
    dir = mkdtempSync(path.join(tmpdir(), 'relay-metrics-'));
    const key = makeKey(dir, 'example.test', 's1', 'rsa', { dns: internet.dns });
    internet.dns.add('_dmarc.example.test', { type: 'TXT', data: 'v=DMARC1; p=reject' });
    relay = await RelayProcess.start(path.join(dir, 'relay.yaml'), internet.relayConfig({ domains: { 'example.test': { dkim: [{ selector: 's1', key: key.file }] } } }));
    const delivered = await send(relay.port, 'alice@example.test', ['bob@gmail.test'], message({ to: 'bob@gmail.test' }));
    assert.equal(delivered.data?.code, 250);
    // From an address outside clients.networks: refused by policy at MAIL FROM.
    const refused = await send(relay.port, 'alice@example.test', ['bob@gmail.test'], message(), { localAddress: '127.0.0.77' });
    assert.equal(refused.mail.code, 550);
    const deferred = await send(relay.port, 'alice@example.test', ['dave@outlook.test'], message({ to: 'dave@outlook.test' }));
    assert.equal(deferred.data?.code, 451);
    await relay.waitFor(() => relay.records.filter((r) => r.msg === 'transaction').length === 2);
    const scraped = await get(httpPort(relay), '/metrics');
    assert.equal(scraped.status, 200);
    assert.match(scraped.type ?? '', /^text\/plain; version=0\.0\.4/);
    text = scraped.body;
    families = await parseExposition(text);
  });
  after(async () => {
    await relay.stop();
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('counts transactions by outcome and recipients by result, reply class and provider', () => {
    assert.equal(sample(families, 'hygiene_relay_transactions_total', { outcome: 'accepted' }), 1);
    assert.equal(sample(families, 'hygiene_relay_transactions_total', { outcome: 'temporary' }), 1);
    assert.equal(sample(families, 'hygiene_relay_recipients_total', { result: 'delivered', reply_class: '2xx', provider: 'none' }), 1, 'gmail.test is no provider the registry knows');
    assert.equal(sample(families, 'hygiene_relay_recipients_total', { result: 'deferred', reply_class: '4xx' }), 1);
    assert.equal(sample(families, 'hygiene_relay_transaction_seconds_count'), 2, 'both answered transactions timed');
  });

  it('counts the policy refusal by reason, and the preflight predictions', () => {
    assert.equal(sample(families, 'hygiene_relay_policy_refusals_total', { reason: 'untrusted_client' }), 1);
    assert.equal(sample(families, 'hygiene_relay_preflight_predictions_total', { dmarc: 'pass', spf: 'pass', dkim: 'pass' }), 2);
    assert.equal(sample(families, 'hygiene_relay_preflight_seconds_count'), 2);
  });

  it('reports upstream sessions, DKIM signing, DNS, egress identity and connections', () => {
    assert.equal(sample(families, 'hygiene_relay_upstream_sessions_opened_total'), 2);
    assert.equal(sample(families, 'hygiene_relay_dkim_sign_seconds_count', { algorithm: 'rsa-sha256' }), 2);
    assert.ok(sample(families, 'hygiene_relay_dns_cache_lookups_total', { level: 'memory', result: 'miss' }) > 0);
    assert.ok(sample(families, 'hygiene_relay_dns_lookup_seconds_count', { type: 'MX', result: 'answer' }) >= 2);
    assert.equal(sample(families, 'hygiene_relay_egress_identities', { status: 'verified' }), 1);
    assert.equal(sample(families, 'hygiene_relay_egress_usable'), 1);
    assert.equal(sample(families, 'hygiene_relay_client_connections'), 0, 'every client has quit');
    assert.ok(families.some((s) => s.name === 'process_cpu_seconds_total'), 'process metrics too');
  });

  it('keeps labels bounded: no address of a client, a sender or a recipient', () => {
    for (const s of families.filter((f) => f.name.startsWith('hygiene_relay_'))) {
      for (const value of Object.values(s.labels)) assert.ok(!net.isIP(value) && !value.includes('@'), `${s.name} has label value ${value}`);
    }
    assert.doesNotMatch(text, /127\.0\.0\.77|alice@|bob@/);
  });
});

describe('probes', () => {
  let internet: Internet;
  let dir: string;
  before(async () => {
    internet = await Internet.start({ destinations: [GMAIL] });
    dir = mkdtempSync(path.join(tmpdir(), 'relay-probes-'));
  });
  after(async () => {
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('/readyz is unready while the SMTP port is taken, and ready once it binds; /healthz answers throughout', async () => {
    const port = await freePort();
    const squatter = net.createServer();
    await new Promise<void>((resolve) => squatter.listen(port, '127.0.0.1', resolve));
    const relay = await RelayProcess.start(path.join(dir, 'bind.yaml'), internet.relayConfig({ listeners: [{ host: '127.0.0.1', port }] }));
    try {
      const unready = await get(httpPort(relay), '/readyz');
      assert.equal(unready.status, 503);
      const body = JSON.parse(unready.body) as { status: string; problems: string[] };
      assert.equal(body.status, 'unready');
      assert.match(body.problems.join('; '), new RegExp(`listener 127\\.0\\.0\\.1:${port} not bound: .*EADDRINUSE`));
      assert.equal((await get(httpPort(relay), '/healthz')).status, 200);
      const mark = relay.records.length;
      await new Promise<void>((resolve) => squatter.close(() => resolve()));
      await relay.waitFor((r) => r.msg === 'listening' && r.port === port, mark);
      const ready = await get(httpPort(relay), '/readyz');
      assert.equal(ready.status, 200);
      assert.deepEqual(JSON.parse(ready.body), { status: 'ready', problems: [], degraded: [] });
      assert.equal((await send(port, 'alice@example.test', ['bob@gmail.test'], message())).data?.code, 250);
    } finally {
      await relay.stop();
    }
  });

  it('/readyz stays ready but says degraded while Redis is down: mail still flows', async () => {
    const redis = await RedisServer.start();
    const relay = await RelayProcess.start(path.join(dir, 'redis.yaml'), internet.relayConfig({ dns: internet.dnsSettings({ redis: redis.url }) }));
    try {
      assert.deepEqual(JSON.parse((await get(httpPort(relay), '/readyz')).body), { status: 'ready', problems: [], degraded: [] });
      const mark = relay.records.length;
      await redis.kill();
      await relay.waitFor((r) => r.msg === 'DNS cache: Redis unavailable, carrying on without it until it is back', mark);
      const degraded = await get(httpPort(relay), '/readyz');
      assert.equal(degraded.status, 200);
      const body = JSON.parse(degraded.body) as { status: string; degraded: string[] };
      assert.equal(body.status, 'degraded');
      assert.match(body.degraded.join('; '), /DNS cache: Redis unavailable/);
      assert.equal((await send(relay.port, 'alice@example.test', ['bob@gmail.test'], message())).data?.code, 250);
      const families = await parseExposition((await get(httpPort(relay), '/metrics')).body);
      assert.equal(sample(families, 'hygiene_relay_redis_up', { use: 'DNS cache' }), 0);
    } finally {
      await relay.stop();
      await redis.kill();
    }
  });

  it('answers 404 off its three paths and 405 to anything but GET', async () => {
    const relay = await RelayProcess.start(path.join(dir, 'paths.yaml'), internet.relayConfig());
    try {
      assert.equal((await get(httpPort(relay), '/')).status, 404);
      assert.equal((await fetch(`http://127.0.0.1:${httpPort(relay)}/metrics`, { method: 'POST' })).status, 405);
    } finally {
      await relay.stop();
    }
  });
});

describe('drain on SIGTERM', () => {
  let internet: Internet;
  let dir: string;
  before(async () => {
    internet = await Internet.start({ destinations: [GMAIL] });
    dir = mkdtempSync(path.join(tmpdir(), 'relay-drain-'));
  });
  after(async () => {
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('during a 5 MB DATA: the transaction ends in 250 at both ends, idle sessions are closed at once, new connections refused, exit 0 long before 30 s', async () => {
    const relay = await RelayProcess.start(path.join(dir, 'drain.yaml'), internet.relayConfig());
    const idle = await Promise.all([RawClient.connect(relay.port), RawClient.connect(relay.port)]);
    for (const { client } of idle) assert.equal((await client.command('EHLO corp-ex01.example.test')).code, 250);
    const { client } = await RawClient.connect(relay.port);
    await client.command('EHLO corp-ex01.example.test');
    await client.command('MAIL FROM:<alice@example.test>');
    await client.command('RCPT TO:<bob@gmail.test>');
    assert.equal((await client.command('DATA')).code, 354);
    const line = `${'x'.repeat(998)}\r\n`;
    const half = line.repeat(Math.ceil((2.5 * MB) / line.length));
    client.write(message({ subject: 'in flight' }).replace(/Hello Bob\.\r\n$/, '') + half);

    const mark = relay.records.length;
    const exited = new Promise<number | null>((resolve) => relay.child.once('exit', (code) => resolve(code)));
    const signalled = Date.now();
    relay.child.kill('SIGTERM');
    await relay.waitFor((r) => String(r.msg).startsWith('draining'), mark);

    // Idle sessions: told 421 4.3.2 unasked, and closed, without waiting for anything.
    for (const { client: idler } of idle) {
      const told = await idler.reply();
      assert.equal(told.code, 421);
      assert.match(told.text, /^4\.3\.2 /);
      await idler.closed;
    }
    await assert.rejects(RawClient.connect(relay.port), /ECONNREFUSED/);
    const readyz = await get(httpPort(relay), '/readyz');
    assert.equal(readyz.status, 503);
    assert.match(readyz.body, /draining/);

    // The transaction in flight finishes as if nothing happened.
    client.write(`${half}.\r\n`);
    const final = await client.reply();
    assert.equal(final.code, 250, final.lines.join(' | '));
    const [received] = await internet.destination('gmail.test').waitForMessages(1);
    assert.ok(received.message.length > 5 * MB);
    // Then its session ends the same way.
    assert.equal((await client.reply()).code, 421);
    await client.closed;

    assert.equal(await exited, 0);
    assert.ok(Date.now() - signalled < 10_000, `exited ${Date.now() - signalled} ms after SIGTERM`);
    const stopped = relay.records.find((r) => r.msg === 'stopped');
    assert.deepEqual({ idleClosed: stopped?.idleClosed }, { idleClosed: 2 });
  });

  it('cuts what is still open at shutdownTimeout and exits 0; the client never sees 250', async () => {
    const relay = await RelayProcess.start(path.join(dir, 'cut.yaml'), internet.relayConfig({ shutdownTimeout: '500ms' }));
    const { client } = await RawClient.connect(relay.port);
    await client.command('EHLO corp-ex01.example.test');
    await client.command('MAIL FROM:<alice@example.test>');
    await client.command('RCPT TO:<bob@gmail.test>');
    await client.command('DATA');
    client.write('Subject: never finished\r\n\r\nthe first line and no more');
    const code = relay.stop();
    await assert.rejects(client.reply(), /connection closed/);
    assert.equal(await code, 0);
    const stopped = relay.records.find((r) => String(r.msg).startsWith('stopped'));
    assert.equal(stopped?.cut, 1);
    assert.equal(internet.destination('gmail.test').received.length, 1, 'only the first test’s message arrived');
  });
});
