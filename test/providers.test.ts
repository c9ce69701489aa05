import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify } from 'yaml';
import { ConfigError, parseConfig } from '../src/config/index.ts';
import { Playbook, PlaybookError, Providers } from '../src/delivery/index.ts';
import { RelayProcess, runCli } from './harness/process.ts';
import { send } from './harness/send.ts';
import { Internet, message, World } from './harness/world.ts';

const APPLE = { domain: 'icloud.test', mx: [{ name: 'mx01.mail.icloud.com', ip: '127.0.0.63' }] };

describe('one provider registry for shaping and the playbook', () => {
  it('every playbook row that pauses names a provider shaping has limits for', () => {
    const providers = Providers.load();
    const playbook = Playbook.load(providers);
    const pausing = playbook.rules.filter((rule) => rule.pause);
    assert.ok(pausing.length >= 5, 'Gmail, Microsoft, Yahoo, Apple and BT rows pause');
    for (const rule of pausing) {
      const provider = providers.entries.find((entry) => entry.name === rule.provider);
      assert.ok(provider, `${rule.id}: pauses, so it must name a provider of the registry (it names ${rule.provider})`);
      assert.ok(provider.maxSessions > 0 && provider.messagesPerMinute > 0 && provider.backoff > 0, `${rule.id}: ${provider.name} has limits`);
    }
  });

  it('merges delivery.providers over the shipped table by name, and refuses a new one without mx', () => {
    const config = parseConfig({ egress: [{ ip: '127.0.0.2' }], delivery: { providers: { gmail: { maxSessions: 2 }, acme: { mx: ['acme-mail.example'], backoff: '1m' } } } });
    const providers = Providers.load(config.delivery.providers);
    const { name, mx, maxSessions, messagesPerMinute, backoff } = providers.entries.find((p) => p.name === 'gmail')!;
    assert.deepEqual({ name, mx, maxSessions, messagesPerMinute, backoff }, { name: 'gmail', mx: ['google.com', 'googlemail.com'], maxSessions: 2, messagesPerMinute: 600, backoff: 600_000 });
    assert.equal(providers.of(['mx1.acme-mail.example'])?.name, 'acme');
    assert.equal(providers.of(['mx1.acme-mail.example'])?.backoff, 60_000);
    assert.equal(providers.of(['mx01.mail.icloud.com'])?.name, 'apple', 'shipped entries stay');
    const broken = parseConfig({ egress: [{ ip: '127.0.0.2' }], delivery: { providers: { acme: { maxSessions: 2 } } } });
    assert.throws(() => Providers.load(broken.delivery.providers), (err: Error) => err instanceof ConfigError && /^delivery\.providers\.acme: a provider that is not shipped .* needs mx$/.test(err.message));
  });

  it("pauses Apple when iCloud answers that it defers for volume, answering 451 without connecting", async () => {
    const world = await World.start({ verify: false, destinations: [APPLE], config: (internet) => ({ delivery: internet.deliverySettings({ providers: { apple: { backoff: '1h' } } }) }) });
    try {
      const icloud = world.destination('icloud.test');
      icloud.script = { rcptTo: () => ({ code: 421, message: '4.7.1 Messages to bob@icloud.test deferred due to excessive volume. Try again later - https://support.apple.com/en-us/HT204137' }) };
      const throttled = await send(world.port, 'alice@example.test', ['bob@icloud.test'], message({ subject: 'volume' }));
      assert.equal(throttled.rcpts[0].code, 451);
      const connections = icloud.connections;
      icloud.script = {};
      const paused = await send(world.port, 'alice@example.test', ['bob@icloud.test'], message({ subject: 'paused' }));
      assert.equal(paused.rcpts[0].code, 451);
      assert.match(paused.rcpts[0].text, /^4\.7\.0 delivery to apple from 127\.0\.0\.2 is paused until .* because apple asked the relay to slow down/);
      assert.equal(icloud.connections, connections, 'no session was opened while paused');
      assert.ok(world.logs.records.some((r) => r.msg === 'provider asked to slow down: pausing deliveries to it from this egress' && r.provider === 'apple'));
    } finally {
      await world.close();
    }
  });
});

describe("an admin's playbook rows over the shipped ones", () => {
  const ISP = { domain: 'isp.test', mx: [{ name: 'mx.isp.test', ip: '127.0.0.65' }] };
  const row = (remediation: string) => ({
    id: 'recipient-address',
    enhanced: ['5.1.*'],
    category: 'recipient',
    permanence: 'permanent',
    remediation,
    examples: [{ at: 'rcpt', reply: '550 5.1.1 <nobody@isp.test>: Recipient address rejected: User unknown' }],
  });
  const added = {
    id: 'isp-full',
    text: 'mailbox quota exceeded at the ISP',
    category: 'mailbox-full',
    permanence: 'permanent',
    remediation: 'Tell the user to empty their ISP mailbox.',
    examples: [{ at: 'rcpt', reply: '550 5.7.1 mailbox quota exceeded at the ISP' }],
  };
  let dir: string;
  let internet: Internet;
  let relay: RelayProcess;
  let configFile: string;
  let overlay: string;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-playbook-'));
    internet = await Internet.start({ verify: false, destinations: [ISP] });
    configFile = path.join(dir, 'relay.yaml');
    overlay = path.join(dir, 'playbook.yaml');
  });
  after(async () => {
    await relay?.stop();
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const config = () => internet.relayConfig({ delivery: internet.deliverySettings({ playbook: overlay }) });
  const refused = async (reply: string): Promise<Record<string, unknown>> => {
    internet.destination('isp.test').script = { rcptTo: () => ({ code: 550, message: reply }) };
    const mark = relay.records.length;
    await send(relay.port, 'alice@example.test', ['nobody@isp.test'], message());
    const record = await relay.waitFor((r) => r.msg === 'transaction', mark);
    return (record.recipients as Record<string, unknown>[])[0];
  };

  it('an admin row replaces the shipped row of its id, and a new row is tried first', async () => {
    writeFileSync(overlay, stringify({ rules: [added, row('Ask the recipient for their new address (corp policy).')] }));
    relay = await RelayProcess.start(configFile, config());
    const unknown = await refused('5.1.1 <nobody@isp.test>: Recipient address rejected: User unknown');
    assert.equal(unknown.rule, 'recipient-address');
    assert.equal(unknown.remediation, 'Ask the recipient for their new address (corp policy).');
    // Without the admin's row the shipped "policy" row (5.7.1) would take this reply.
    const full = await refused('5.7.1 mailbox quota exceeded at the ISP');
    assert.deepEqual([full.rule, full.category, full.remediation], ['isp-full', 'mailbox-full', 'Tell the user to empty their ISP mailbox.']);
  });

  it('refuses a broken overlay on SIGHUP and keeps the running playbook', async () => {
    const mark = relay.records.length;
    writeFileSync(overlay, stringify({ rules: [{ ...added, category: 'spam' }] }));
    relay.child.kill('SIGHUP');
    const record = await relay.waitFor((r) => r.msg === 'reload refused: the running configuration stays in use', mark);
    assert.match(String(record.error), /playbook\.yaml: rules\[0\] \(isp-full\)\.category: Invalid option/);
    const unknown = await refused('5.1.1 <nobody@isp.test>: Recipient address rejected: User unknown');
    assert.equal(unknown.remediation, 'Ask the recipient for their new address (corp policy).');
  });

  it('refuses to start with a broken overlay, in one line, exit 2', async () => {
    const file = path.join(dir, 'start.yaml');
    writeFileSync(file, stringify(config()));
    writeFileSync(overlay, stringify({ rules: [{ ...added, examples: [{ at: 'rcpt', reply: '550 5.1.1 no such user' }] }] }));
    const result = await runCli(['start', '--config', file]);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /^hygiene-relay: config error: .*playbook\.yaml: rules\[0\] \(isp-full\)\.examples\[0\]: classified by recipient-address behind|^hygiene-relay: config error: .*\(isp-full\)\.examples\[0\]: .*not by its own rule/m);
    assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
  });

  it('names the overlay file and problem when it cannot be read', () => {
    assert.throws(() => Playbook.load(Providers.load(), path.join(dir, 'missing.yaml')), (err: Error) => err instanceof PlaybookError && /missing\.yaml: cannot read: ENOENT/.test(err.message));
  });
});
