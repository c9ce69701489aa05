import assert from 'node:assert/strict';
import { it } from 'node:test';
import { SHORT, soak, summary } from './harness/soak.ts';

/**
 * Issue 14, part 6, the short form of `npm run soak`: 60 messages from 4 clients retrying
 * like MTAs through two relay processes sharing a persistent Redis memo, both destinations
 * injecting faults, one relay drained and started again, Redis killed and started again.
 */
it('a soak with faults and restarts: every recipient told 250 has it exactly once, nothing twice, nothing for a refusal', { timeout: 60_000 }, async () => {
  const report = await soak(SHORT);
  const figures = summary(report);
  console.log(figures);
  assert.deepEqual(report.duplicates, [], figures);
  assert.deepEqual(report.losses, [], figures);
  assert.deepEqual(report.refusedButArrived, [], figures);
  assert.deepEqual(report.strays, [], figures);
  assert.deepEqual(report.relayExits, [], figures);
  assert.deepEqual(report.restarts, { relay: 1, redis: 1 });
  // The checks above are not vacuous: most recipients were delivered, some refused for good.
  assert.ok(report.finals.delivered > report.recipients / 2, figures);
  assert.ok(report.finals.refused > 0, figures);
});
