import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RawClient } from './harness/client.ts';
import { makeKey } from './harness/dkim.ts';
import { RelayProcess } from './harness/process.ts';
import { Internet, message } from './harness/world.ts';

const MB = 1024 * 1024;

/**
 * What a 20 MB message usually is: a short 8-bit text part with lines that need
 * dot-stuffing, and an attachment in base64 lines of 76 characters (RFC 2045 §6.8).
 */
function largeBody(): Buffer {
  const text = Buffer.from('.a line with a leading dot\r\n..two dots\r\n8-bit: \xe9\xe8\xfc\r\n.\r\n', 'latin1');
  const attachment = Buffer.from(Array.from({ length: 57 * 1024 }, (_, i) => (i * 7919) % 256)).toString('base64');
  const lines = attachment.match(/.{1,76}/g)!.join('\r\n') + '\r\n';
  const block = Buffer.from(lines, 'latin1');
  const count = Math.ceil((20 * MB) / block.length);
  return Buffer.concat([text, ...Array.from({ length: count }, () => block)]);
}

describe('a 20 MB message', () => {
  let internet: Internet;
  let relay: RelayProcess;
  let dir: string;
  before(async () => {
    internet = await Internet.start();
    dir = mkdtempSync(path.join(tmpdir(), 'relay-large-'));
    const spool = path.join(dir, 'spool');
    mkdirSync(spool);
    const key = makeKey(dir, 'example.test', 'big', 'rsa', { dns: internet.dns });
    relay = await RelayProcess.start(
      path.join(dir, 'relay.yaml'),
      internet.relayConfig({
        delivery: { ...(internet.relayConfig().delivery as object), spool: { memoryLimit: '1MB', dir: spool } },
        domains: { 'example.test': { dkim: [{ selector: 'big', key: key.file }] } },
      }),
    );
  });
  after(async () => {
    await relay.stop();
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('arrives byte-exact and DKIM-signed while the relay grows by less than 64 MB, and leaves no spool file', async (t) => {
    const body = largeBody();
    const raw = Buffer.concat([Buffer.from(message({ subject: 'large' }).replace(/Hello Bob\.\r\n$/, ''), 'latin1'), body]);
    const rssBefore = relay.memory('VmRSS');

    const { client } = await RawClient.connect(relay.port);
    await client.command('EHLO corp-ex01.example.test');
    await client.command('MAIL FROM:<alice@example.test> BODY=8BITMIME');
    await client.command('RCPT TO:<bob@gmail.test>');
    const { final } = await client.data(raw);
    await client.quit();
    assert.equal(final?.code, 250, JSON.stringify(final));

    const growth = relay.memory('VmHWM') - rssBefore;
    const [received] = await internet.destination('gmail.test').waitForMessages(1);
    const headerEnd = received.message.indexOf('\r\n\r\n') + 4;
    assert.ok(received.message.subarray(headerEnd).equals(body), 'body byte-exact');
    assert.ok(received.message.subarray(received.message.indexOf('From: Alice')).equals(raw), 'whole message after the relay\'s headers byte-exact');
    assert.deepEqual(received.verdict?.dkim, ['pass']);
    const record = await relay.waitFor((r) => r.msg === 'transaction');
    const prediction = (record.preflight as { prediction: { spf: { result: string }; dkim: { result: string }[]; dmarc: { result: string } } }).prediction;
    assert.deepEqual(
      [prediction.spf.result, prediction.dkim.map((d) => d.result), prediction.dmarc.result],
      [received.verdict?.spf, received.verdict?.dkim, received.verdict?.dmarc],
      'the verdict composed for a large message is the receiver\'s',
    );
    t.diagnostic(`relay peak RSS growth: ${(growth / MB).toFixed(1)} MB`);
    assert.ok(growth < 64 * MB, `RSS grew by ${(growth / MB).toFixed(1)} MB`);
    assert.deepEqual(readdirSync(path.join(dir, 'spool')), [], 'spool file removed');
  });
});
