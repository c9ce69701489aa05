import assert from 'node:assert/strict';
import { it } from 'node:test';
import { runCli } from './harness/process.ts';

it('`hygiene-relay demo` exits 0 after printing what the receivers saw and concluded', async () => {
  const result = await runCli(['demo']);
  assert.equal(result.code, 0, result.stderr + result.stdout);
  assert.match(result.stdout, /What mx\.gmail\.test received:\n  connection from +127\.0\.0\.2, HELO relay-out\.example\.test, TLS/);
  assert.match(result.stdout, /receiver's verdict +spf=pass dkim=pass,pass dmarc=pass/);
  assert.match(result.stdout, /What mx\.outlook\.test received:/);
  assert.match(result.stdout, /demo: OK/);
});
