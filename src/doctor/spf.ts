import { validateTerms } from 'mailauth/lib/spf/syntax.js';
import { evaluateSpf, spfAdvice, spfMechanism, txtZoneLine, type SpfLookups, type SpfVerdict } from '../auth/index.ts';
import type { Resolve } from '../dns/index.ts';
import type { Egress } from '../identity/index.ts';
import { txtRecords } from './records.ts';
import { result, type DoctorCheck } from './report.ts';

// RFC 7208 §4.5: an SPF record is a TXT string that starts "v=spf1", then a space or its end.
const SPF = /^v=spf1(?: |$)/i;

/**
 * The address the whole record is evaluated for: 255.255.255.255 (limited broadcast, RFC 919
 * §7) sends no mail, so no mechanism matches it and the evaluation spends every lookup the
 * record can make: what RFC 7208 §4.6.4 limits, whichever sender a receiver checks.
 */
const PROBE = '255.255.255.255';

const ALL = /^([+?~-]?)all$/i;
const PTR = /^[+?~-]?ptr(?::|$)/i;
const MODIFIER = /^[a-z][a-z0-9._-]*=/i;

function termsOf(record: string): string[] {
  return record.split(' ').filter(Boolean).slice(1);
}

/** mailauth's validator (the one its strict mode runs) on one term: it throws on some malformed ones, which then stay for the evaluation to report. */
function malformed(term: string): boolean {
  try {
    return validateTerms([term]) !== false;
  } catch {
    return false;
  }
}

/** The same evaluation as the preflight's; a lookup that throws is a temperror, as checkSender takes it. */
async function evaluate(domain: string, ip: string, helo: string, resolve: Resolve): Promise<{ verdict: SpfVerdict; lookups?: SpfLookups }> {
  try {
    return await evaluateSpf(`postmaster@${domain}`, { resolve, ip, helo });
  } catch (err) {
    return { verdict: { result: 'temperror', domain, cause: (err as Error).message } };
  }
}

/**
 * `include:` terms whose record lists only addresses, replaced by those addresses (and so on
 * down): an include spends one of the ten lookups of RFC 7208 §4.6.4, an ip4:/ip6: term none.
 * The included record's -all, ~all or ?all only ends it (§5.2: include matches on pass only).
 */
async function flattened(terms: string[], resolve: Resolve, depth = 0): Promise<string[]> {
  const expanded = await Promise.all(
    terms.map(async (term) => {
      const target = /^\+?include:([^%\s]+?)\.?$/i.exec(term)?.[1];
      if (!target || depth >= 10) return [term];
      const records = await txtRecords(target, SPF, resolve);
      if (!Array.isArray(records) || records.length !== 1) return [term];
      const inner = termsOf(records[0]).filter((t) => !/^[?~-]all$/i.test(t));
      if (!inner.every((t) => /^\+?(ip4|ip6|include):/i.test(t))) return [term];
      return flattened(inner, resolve, depth + 1);
    }),
  );
  return expanded.flat();
}

/**
 * The one record to publish: every term of the records found (once), terms that do not parse
 * and `ptr` left out, the egress mechanisms added where SPF does not pass for them, includes
 * flattened when over the lookup limit, and ending in the -all or ~all it had (else -all).
 */
async function repaired(records: string[], add: string[], flatten: boolean, resolve: Resolve): Promise<string> {
  const seen = new Set<string>();
  let terms = records.flatMap(termsOf).filter((term) => !seen.has(term.toLowerCase()) && seen.add(term.toLowerCase()));
  if (flatten) terms = await flattened(terms, resolve);
  const qualifier = terms.map((term) => ALL.exec(term)?.[1]).find((q) => q === '-' || q === '~') ?? '-';
  const kept = terms.filter((term) => !ALL.test(term) && !PTR.test(term) && !malformed(term));
  const mechanisms = kept.filter((term) => !MODIFIER.test(term));
  const modifiers = kept.filter((term) => MODIFIER.test(term));
  const missing = add.filter((mechanism) => !mechanisms.some((term) => term.toLowerCase() === mechanism));
  // A redirect= with no all term hands the verdict on (RFC 7208 §6.1); an all term would end it first.
  const redirects = modifiers.some((term) => /^redirect=/i.test(term)) && !terms.some((term) => ALL.test(term));
  return ['v=spf1', ...missing, ...mechanisms, ...(redirects ? [] : [`${qualifier}all`]), ...modifiers].join(' ');
}

/** What `spf.all` makes of how the record ends (RFC 7208 §4.7, §5.1). */
function allCheck(domain: string, record: string, fix: string[]): DoctorCheck {
  const terms = termsOf(record);
  const all = terms.map((term) => ALL.exec(term)).find(Boolean);
  if (all && (all[1] === '-' || all[1] === '~')) return result('spf.all', domain, 'pass', `ends in ${all[0]}: other senders fail${all[1] === '~' ? ' softly' : ''}`);
  if (all && all[1] === '?') return result('spf.all', domain, 'warn', `ends in ?all: any other sender is neutral, so forged mail is not told from yours`, fix);
  if (all) return result('spf.all', domain, 'fail', `ends in ${all[0]}: every address on the internet may send as ${domain}`, fix);
  const redirect = terms.find((term) => /^redirect=/i.test(term));
  if (redirect) return result('spf.all', domain, 'pass', `${redirect}: that record decides for other senders`);
  return result('spf.all', domain, 'warn', `no all term: any other sender is neutral (RFC 7208 §4.7)`, fix);
}

/**
 * One sending domain's SPF, for mail whose MAIL FROM is in it: exactly one record, that
 * parses, within the lookup limits, authorizing every egress address, ending in -all or
 * ~all, without `ptr`. `passes`: SPF passes for every egress (DMARC's SPF side).
 */
export async function spfChecks(domain: string, egress: readonly Egress[], resolve: Resolve): Promise<{ checks: DoctorCheck[]; passes: boolean }> {
  const found = await txtRecords(domain, SPF, resolve);
  const ips = egress.map((e) => spfMechanism(e.ip));
  if (!Array.isArray(found)) return { checks: [result('spf.record', domain, 'warn', `lookup of TXT ${domain} failed (${found.failed}): nothing is known until DNS answers`)], passes: false };
  if (found.length === 0) {
    const record = `v=spf1 ${ips.join(' ')} -all`;
    return { checks: [result('spf.record', domain, 'fail', `${domain} publishes no SPF record: receivers see spf=none (Gmail wants SPF or DKIM from every sender, both from bulk senders)`, [txtZoneLine(domain, record)])], passes: false };
  }
  if (found.length > 1) {
    const record = await repaired(found, ips, false, resolve);
    const message = `${domain} publishes ${found.length} SPF records (${found.map((r) => `"${r}"`).join(', ')}): receivers conclude permerror for every sender (RFC 7208 §4.5); merge them into one`;
    return { checks: [result('spf.record', domain, 'fail', message, [txtZoneLine(domain, record), `in place of all ${found.length}`])], passes: false };
  }
  const [record] = found;
  const [probed, ...evaluated] = await Promise.all([evaluate(domain, PROBE, egress[0]?.helo ?? domain, resolve), ...egress.map((e) => evaluate(domain, e.ip, e.helo, resolve))]);
  const { verdict: probe, lookups } = probed;
  const verdicts = evaluated.map((e) => e.verdict);
  const overLimit = probe.result === 'permerror' && lookups !== undefined && (lookups.count > lookups.limit || lookups.void > 2);
  const usesPtr = termsOf(record).filter((term) => PTR.test(term));
  // The egress mechanisms go in where SPF does not pass, and where ptr (taken out) may be what passes.
  const add = egress.flatMap((e, i) => (verdicts[i].result !== 'pass' || usesPtr.length ? [spfMechanism(e.ip)] : []));
  const suggestion = await repaired([record], add, overLimit, resolve);
  const fix = [txtZoneLine(domain, suggestion)];
  const checks: DoctorCheck[] = [result('spf.record', domain, 'pass', `"${record}"`)];

  if (probe.result === 'permerror' && !overLimit) checks.push(result('spf.parses', domain, 'fail', probe.cause ?? 'permerror', fix));
  else checks.push(result('spf.parses', domain, 'pass', 'the record and those it includes parse (RFC 7208 §4.6)'));
  if (overLimit) checks.push(result('spf.limits', domain, 'fail', `${probe.cause}; replace includes by the addresses they list`, [...fix, 'and keep them in step with the providers included']));
  else if (probe.result === 'temperror') checks.push(result('spf.limits', domain, 'warn', `not known: ${spfAdvice(probe, PROBE)}`));
  else if (lookups) checks.push(result('spf.limits', domain, 'pass', `${lookups.count} of ${lookups.limit} DNS lookups, ${lookups.void} of 2 void lookups (RFC 7208 §4.6.4)`));

  egress.forEach((e, i) => {
    const verdict = verdicts[i];
    if (verdict.result === 'pass') checks.push(result('spf.authorizes', domain, 'pass', `${e.ip} passes (EHLO ${e.helo})`));
    else checks.push(result('spf.authorizes', domain, verdict.result === 'temperror' ? 'warn' : 'fail', spfAdvice(verdict, e.ip), fix));
  });
  checks.push(allCheck(domain, record, fix));
  if (usesPtr.length) {
    const message = `uses ${usesPtr.join(' ')}, which RFC 7208 §5.5 says SHOULD NOT be used (slow, and receivers may skip it): name the relay's addresses with ${egress.map((e) => spfMechanism(e.ip)).join(' ')} instead`;
    checks.push(result('spf.ptr', domain, 'warn', message, fix));
  } else {
    checks.push(result('spf.ptr', domain, 'pass', 'no ptr mechanism'));
  }
  return { checks, passes: egress.length > 0 && verdicts.every((v) => v.result === 'pass') };
}
