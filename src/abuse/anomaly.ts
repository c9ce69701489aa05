import type { AbuseConfig } from '../config/index.ts';
import type { Baseline, LastHour } from './store.ts';

/** The anomaly rule's settings (abuse.anomaly), when it is on. */
export type AnomalyRule = Exclude<AbuseConfig['anomaly'], false>;

/** The middle value (the mean of the two middle ones for an even count); 0 for no values. */
export function median(values: readonly number[]): number {
  if (!values.length) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/**
 * Why the last hour is anomalous, or undefined when it is not. Recipients and distinct
 * recipient domains are judged alike: over `factor` times the median of the hours in the
 * baseline (those in which the sender sent anything: nights and weekends do not pull the
 * median to zero), and over the floor (a sender with little or no history is judged by the
 * floor alone, so a quiet mailbox that sends one newsletter is not flagged for it).
 */
export function anomaly(lastHour: LastHour, baseline: Baseline, rule: AnomalyRule): string | undefined {
  const judged = [
    { what: 'recipients', now: lastHour.recipients, usual: median(baseline.recipients), floor: rule.minRecipients },
    { what: 'recipient domains', now: lastHour.domains, usual: median(baseline.domains), floor: rule.minDomains },
  ];
  const over = judged.filter(({ now, usual, floor }) => now > floor && now > rule.factor * usual);
  if (!over.length) return undefined;
  // ASCII only: this is the hold's reason, which every 550 of the hold quotes, and a reply
  // line is ASCII (RFC 5321 §4.2; the listeners spell anything else out as \xD7).
  return over.map(({ what, now, usual, floor }) => `${now} ${what} in the last hour, against a median of ${usual} an hour (over ${rule.factor} times that and over ${floor})`).join('; ');
}

/** Only a last hour over a floor can be anomalous: below both, the baseline need not be read. */
export function overFloor(lastHour: LastHour, rule: AnomalyRule): boolean {
  return lastHour.recipients > rule.minRecipients || lastHour.domains > rule.minDomains;
}
