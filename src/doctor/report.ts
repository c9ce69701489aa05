import { z } from 'zod';
import type { Logger } from '../observability/index.ts';

/** Every check doctor makes, by the stable id the JSON report and the log records carry. */
const CHECKS = {
  'egress.ptr': 'PTR',
  'egress.fcrdns': 'forward-confirmed PTR',
  'egress.helo': 'HELO',
  'egress.blocklist': 'blocklist',
  'spf.record': 'SPF record',
  'spf.parses': 'SPF syntax',
  'spf.limits': 'SPF lookup limits',
  'spf.authorizes': 'SPF authorizes',
  'spf.all': 'SPF all',
  'spf.ptr': 'SPF ptr',
  'dkim.keys': 'DKIM keys',
  'dkim.published': 'DKIM published',
  'dkim.size': 'DKIM key size',
  'dkim.algorithms': 'DKIM algorithms',
  'dmarc.record': 'DMARC record',
  'dmarc.policy': 'DMARC policy',
  'dmarc.alignment': 'DMARC alignment',
  'dmarc.rua': 'DMARC reports',
  'mta-sts.record': 'MTA-STS',
  'tls-rpt.record': 'TLS-RPT',
} as const;

export type CheckId = keyof typeof CHECKS;

/**
 * pass: as receivers want it; warn: works, but should change; fail: receivers will distrust
 * or refuse mail; info: optional, for the admin to know (MTA-STS, TLS-RPT, a p=none policy).
 */
const status = z.enum(['pass', 'warn', 'fail', 'info']);

const check = z.strictObject({
  check: z.enum(Object.keys(CHECKS) as [CheckId, ...CheckId[]]),
  /** The egress address or the sending domain (with the selector for a DKIM key) checked. */
  subject: z.string(),
  status,
  /** One line: what was found, and for warn and fail why it matters. */
  message: z.string(),
  /** For warn and fail (and some info): the records to publish or change, as zone file lines, or the command or setting that makes one. */
  fix: z.array(z.string()),
});

/** The shape of `hygiene-relay doctor --json` (docs/doctor.md). */
export const doctorReportSchema = z.strictObject({
  version: z.literal(1),
  /** When the checks ran (ISO 8601, UTC). */
  checkedAt: z.iso.datetime(),
  /** The worst status of any check; info counts as pass. */
  status: z.enum(['pass', 'warn', 'fail']),
  /** The public egress addresses and the sending domains checked. */
  egress: z.array(z.string()),
  domains: z.array(z.string()),
  counts: z.strictObject({ pass: z.number().int(), warn: z.number().int(), fail: z.number().int(), info: z.number().int() }),
  checks: z.array(check),
});

export type DoctorReport = z.infer<typeof doctorReportSchema>;
export type DoctorCheck = z.infer<typeof check>;
export type CheckStatus = DoctorCheck['status'];

/** A check's result as the check functions return it. */
export function result(id: CheckId, subject: string, checkStatus: CheckStatus, message: string, fix: string[] = []): DoctorCheck {
  return { check: id, subject, status: checkStatus, message, fix };
}

export function assemble(egress: string[], domains: string[], checks: DoctorCheck[], checkedAt: Date): DoctorReport {
  const counts = { pass: 0, warn: 0, fail: 0, info: 0 };
  for (const c of checks) counts[c.status]++;
  return {
    version: 1,
    checkedAt: checkedAt.toISOString(),
    status: counts.fail ? 'fail' : counts.warn ? 'warn' : 'pass',
    egress,
    domains,
    counts,
    checks,
  };
}

/** The exit status of `doctor`: 0 all pass, 1 warnings only, 2 any failure. */
export function exitCode(report: DoctorReport): number {
  return { pass: 0, warn: 1, fail: 2 }[report.status];
}

// The labels of `config check` and `dkim check`, so that one eye reads all three.
const LABEL = { pass: 'OK  ', warn: 'WARN', fail: 'FAIL', info: 'INFO' } as const;

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** The report as text: one line per check, each fix indented under it, a count at the end. */
export function renderReport(report: DoctorReport): string {
  const lines: string[] = [];
  if (report.domains.length === 0) lines.push('no sending domains configured: only the egress identities are checked (name one with --domain D)');
  for (const c of report.checks) {
    lines.push(`${LABEL[c.status]} ${c.subject} ${CHECKS[c.check]}: ${c.message}`);
    for (const fix of c.fix) lines.push(`       ${fix}`);
  }
  const { counts } = report;
  lines.push(`${LABEL[report.status]} doctor: ${plural(counts.fail, 'failure')}, ${plural(counts.warn, 'warning')}, ${counts.pass} passed, ${counts.info} for information`);
  return `${lines.join('\n')}\n`;
}

/**
 * The report in the log, as start-up and SIGHUP write it: one summary record, then one record
 * per failure (error) and per warning (warn), each with the fix.
 */
export function logReport(report: DoctorReport, logger: Logger): void {
  const log = logger.child({ component: 'doctor' });
  const summary = { status: report.status, counts: report.counts, egress: report.egress, domains: report.domains };
  const text = `DNS checks: ${plural(report.counts.fail, 'failure')}, ${plural(report.counts.warn, 'warning')}`;
  if (report.status === 'fail') log.error(summary, text);
  else if (report.status === 'warn') log.warn(summary, text);
  else log.info(summary, text);
  for (const c of report.checks) {
    const fields = { check: c.check, subject: c.subject, problem: c.message, fix: c.fix };
    if (c.status === 'fail') log.error(fields, `DNS check failed: ${c.subject} ${CHECKS[c.check]}`);
    else if (c.status === 'warn') log.warn(fields, `DNS check warning: ${c.subject} ${CHECKS[c.check]}`);
  }
}
