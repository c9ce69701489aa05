import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import nodemailer from 'nodemailer';
import { parse } from 'yaml';
import { generateDkimKey } from '../src/auth/index.ts';
import { parseConfig } from '../src/config/index.ts';
import { createLogger } from '../src/observability/index.ts';
import { startRelay } from '../src/relay.ts';
import { Internet, LogCapture, message } from '../test/harness/world.ts';

const CONFIG = path.resolve(import.meta.dirname, '../config/demo.yaml');

function say(line = ''): void {
  process.stdout.write(`${line}\n`);
}

/**
 * `hygiene-relay demo`: the test harness started for a person to watch. A DNS server and two
 * provider-like MX hosts on loopback, the relay with config/demo.yaml, one message from a
 * simulated internal server, and what each receiver saw and concluded.
 */
export async function runDemo(): Promise<number> {
  const internet = await Internet.start();
  const logs = new LogCapture();
  const keyDir = mkdtempSync(path.join(tmpdir(), 'hygiene-relay-demo-'));
  let relay;
  try {
    // What an admin does once per domain: `dkim keygen`, publish the TXT record, add the YAML.
    const dkim = (['rsa', 'ed25519'] as const).map((type) => {
      const selector = type === 'rsa' ? 's2026' : 'ed2026';
      const key = generateDkimKey({ domain: 'example.test', selector, type, bits: 2048, out: keyDir });
      const strings = [...key.txtRecord.matchAll(/"([^"]*)"/g)].map((m) => m[1]);
      internet.dns.add(`${selector}._domainkey.example.test`, { type: 'TXT', data: strings });
      return { selector, key: key.file };
    });
    internet.dns.add('_dmarc.example.test', { type: 'TXT', data: 'v=DMARC1; p=reject' });
    const document = parse(readFileSync(CONFIG, 'utf8')) as Record<string, Record<string, unknown>>;
    const config = parseConfig(
      {
        ...document,
        dns: { ...document.dns, servers: [internet.dns.address] },
        delivery: { ...document.delivery, port: internet.mxPort },
        domains: { 'example.test': { dkim } },
      },
      CONFIG,
    );
    relay = await startRelay(config, createLogger('info', logs));
    const [egress] = relay.egress.identities;
    say('hygiene-relay demo: a simulated internet on loopback');
    say(`  DNS server            ${internet.dns.address} (zones for gmail.test, outlook.test, example.test: SPF, DKIM keys, DMARC p=reject; PTR of the egress)`);
    for (const [domain, destination] of internet.destinations) say(`  MX of ${domain.padEnd(15)} ${destination.name} on ${destination.host}:${destination.port}`);
    say(`  relay                 127.0.0.1:${relay.ports[0]}, egress ${egress.ip}, HELO ${egress.helo} (${egress.verified ? 'PTR forward-confirmed' : `NOT verified: ${egress.problem}`})`);
    say();

    const recipients = ['bob@gmail.test', 'carol@outlook.test'];
    say(`corp-ex01 (the internal server) sends one message to ${recipients.join(' and ')} through the relay…`);
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: relay.ports[0], name: 'corp-ex01.example.test', ignoreTLS: true });
    const info = await transport.sendMail({
      envelope: { from: 'alice@example.test', to: recipients },
      raw: message({ to: recipients.join(', '), subject: 'Quarterly report', body: 'Hello both, the report is attached in spirit.\r\n' }),
    });
    say(`relay answered: ${info.response}`);
    say();

    let ok = info.accepted.length === recipients.length;
    for (const domain of ['gmail.test', 'outlook.test']) {
      const [received] = await internet.destination(domain).waitForMessages(1);
      const headers = received.message.toString('latin1').split('\r\n\r\n')[0];
      say(`What ${internet.destination(domain).name} received:`);
      say(`  connection from       ${received.clientAddress}, HELO ${received.helo}, ${received.secure ? `TLS (${received.tlsProtocol})` : 'no TLS'}`);
      say(`  envelope              MAIL FROM:<${received.envelope.mailFrom}> RCPT TO:${received.envelope.rcptTo.map((r) => `<${r}>`).join(',')}`);
      say(`  receiver's verdict    spf=${received.verdict?.spf} dkim=${received.verdict?.dkim.join(',') || 'none'} dmarc=${received.verdict?.dmarc}`);
      say('  headers:');
      for (const line of headers.split('\r\n')) say(`    ${line}`);
      say();
      ok &&= received.helo === egress.helo && received.verdict?.spf === 'pass' && received.verdict?.dmarc === 'pass';
    }
    const record = await logs.waitFor((r) => r.msg === 'transaction');
    say('The relay logged one transaction record (JSON, one line per transaction):');
    say(`  ${JSON.stringify(record)}`);
    say();
    say(ok ? 'demo: OK, the relay delivered with a verified HELO; SPF, DKIM and DMARC passed at both receivers' : 'demo: FAILED, see above');
    return ok ? 0 : 1;
  } finally {
    await relay?.close();
    await internet.close();
    rmSync(keyDir, { recursive: true, force: true });
  }
}
