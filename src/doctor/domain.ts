import type { DNSResolver } from 'mailauth';
import { dmarc } from 'mailauth/lib/dmarc/index.js';
import { checkPublished, keyAdvice, keyKind, parseTags, txtRecordValue, txtZoneLine, zoneFileLine, type KeyRing } from '../auth/index.ts';
import type { Resolve } from '../dns/index.ts';
import { txtRecords, withTag } from './records.ts';
import { result, type DoctorCheck } from './report.ts';

function keygen(domain: string, options = ''): string {
  return `hygiene-relay dkim keygen --domain ${domain} --selector <new selector>${options} --out /etc/hygiene-relay/keys (it prints the TXT record; add the key under domains.${domain}.dkim)`;
}

/**
 * The keys mail From `domain` is signed with (its own, or its parent's with `subdomains:
 * true`), standby ones too: each published and matching (`dkim check`), its size, and
 * whether the domain signs with RSA as well as Ed25519. `signs`: d= of a key that verifies.
 */
export async function dkimChecks(domain: string, keys: KeyRing, resolve: Resolve): Promise<{ checks: DoctorCheck[]; signs?: string }> {
  const signer = keys.forAuthor(domain)[0]?.domain ?? domain;
  const own = keys.keys.filter((key) => key.domain === signer);
  if (own.length === 0) {
    return { checks: [result('dkim.keys', domain, 'warn', `no DKIM key is configured for ${domain}: its mail goes out unsigned, so DMARC rests on SPF alone (and Gmail wants both from bulk senders)`, [keygen(domain)])] };
  }
  const published = await Promise.all(own.map((key) => checkPublished(key, resolve)));
  const advice = keyAdvice(signer, own);
  const checks: DoctorCheck[] = [];
  for (const { key, state, detail } of published) {
    const subject = `${domain} selector ${key.selector}`;
    if (state === 'matches') checks.push(result('dkim.published', subject, 'pass', `${detail} (${keyKind(key)})`));
    else if (state === 'unreadable') checks.push(result('dkim.published', subject, 'warn', detail));
    else checks.push(result('dkim.published', subject, 'fail', `${detail.replace(/: (publish|replace it with) .*$/, '')} (${keyKind(key)})`, [zoneFileLine(key.domain, key.selector, txtRecordValue(key))]));
    const small = advice.find((a) => a.selector === key.selector);
    if (small) checks.push(result('dkim.size', subject, 'warn', small.text, [keygen(signer, ' --bits 2048')]));
    else checks.push(result('dkim.size', subject, 'pass', key.bits ? `RSA ${key.bits} bits` : 'Ed25519 (RFC 8463)'));
  }
  const ed25519Only = advice.find((a) => a.selector === undefined);
  if (ed25519Only) checks.push(result('dkim.algorithms', domain, 'warn', ed25519Only.text, [keygen(signer, ' --type rsa')]));
  else checks.push(result('dkim.algorithms', domain, 'pass', `signs with ${[...new Set(own.filter((k) => !k.standby).map((k) => k.algorithm))].join(' and ')}`));
  const verifies = published.some((p) => p.state === 'matches' && !p.key.standby);
  return { checks, signs: verifies ? signer : undefined };
}

/**
 * DMARC as a receiver evaluates it for mail From `domain` sent through this relay (mailauth,
 * as the preflight does): SPF passing for MAIL FROM in the domain when `spfPasses`, DKIM
 * signed d=`dkimDomain`. `subdomains`: the keys also sign mail From its subdomains.
 */
export async function dmarcChecks(domain: string, sending: { spfPasses: boolean; dkimDomain?: string; subdomains: boolean }, resolve: Resolve): Promise<DoctorCheck[]> {
  const verdict = await dmarc({
    headerFrom: domain,
    spfDomains: sending.spfPasses ? [domain] : [],
    dkimDomains: sending.dkimDomain ? [{ domain: sending.dkimDomain }] : [],
    resolver: resolve as unknown as DNSResolver,
  });
  const outcome = verdict ? verdict.status.result : 'none';
  if (outcome === 'temperror') return [result('dmarc.record', domain, 'warn', `lookup failed (${verdict && verdict.error}): nothing is known until DNS answers`)];
  if (!verdict || outcome === 'none' || !verdict.rr) {
    const org = verdict ? verdict.domain : domain;
    const where = org && org !== domain ? `_dmarc.${domain} or _dmarc.${org}` : `_dmarc.${domain}`;
    const message = `no DMARC record at ${where}: Gmail, Yahoo and Microsoft want one (Gmail answers 5.7.40 without), and BT enforces DMARC`;
    return [result('dmarc.record', domain, 'fail', message, [txtZoneLine(`_dmarc.${org || domain}`, `v=DMARC1; p=none; rua=mailto:dmarc-reports@${org || domain}`)])];
  }
  const record = verdict.rr;
  const policyDomain = verdict.policyDomain ?? domain;
  const at = `_dmarc.${policyDomain}`;
  const rua = parseTags(record).get('rua');
  const { spf, dkim } = verdict.alignment;
  // RFC 7489 §3.1: strict alignment wants the identical domain. With subdomains: true the relay
  // signs mail From sub.example.com with d=example.com, and MAIL FROM often stays the parent's.
  const strict = sending.subdomains ? [...(spf.strict ? ['aspf'] : []), ...(dkim.strict ? ['adkim'] : [])] : [];
  // One record that fixes every warning below, so that publishing one fix keeps the others.
  const suggestion = strict.reduce((text, tag) => withTag(text, tag, 'r'), rua ? record : withTag(record, 'rua', `mailto:dmarc-reports@${policyDomain}`));
  const checks = [result('dmarc.record', domain, 'pass', `${at}: "${record}"`)];
  const inherited = verdict.policyDomain !== undefined && verdict.policyDomain !== domain;
  // RFC 7489 §6.3: sp= is the policy of subdomains, p= where it is absent.
  const scope = `${inherited ? `sp=${verdict.sp} (inherited from ${verdict.policyDomain})` : `p=${verdict.p}`}${sending.subdomains && !inherited ? `, subdomains sp=${verdict.sp}` : ''}${verdict.testMode ? ', t=y (testing: one level lower)' : ''}`;
  if (verdict.policy === 'none') {
    const message = `${scope}: receivers report failures but act on none; once the reports show only your own mail, move on to quarantine`;
    checks.push(result('dmarc.policy', domain, 'info', message, [txtZoneLine(at, withTag(suggestion, inherited ? 'sp' : 'p', 'quarantine'))]));
  } else {
    checks.push(result('dmarc.policy', domain, 'pass', `${scope}: receivers ${verdict.policy} mail that fails`));
  }
  const modes = `aspf=${spf.strict ? 's' : 'r'}, adkim=${dkim.strict ? 's' : 'r'}`;
  if (outcome !== 'pass') {
    const message = `mail From ${domain} would fail DMARC (${modes}): neither SPF nor DKIM passes aligned`;
    checks.push(result('dmarc.alignment', domain, 'fail', message, ['the records of the failing SPF and DKIM checks above']));
  } else if (strict.length) {
    const message = `${strict.map((t) => `${t}=s`).join(', ')}: mail From a subdomain of ${domain} is signed d=${sending.dkimDomain ?? domain} (subdomains: true), which strict alignment does not accept`;
    checks.push(result('dmarc.alignment', domain, 'warn', message, [txtZoneLine(at, suggestion)]));
  } else {
    const by = [...(spf.result ? ['SPF'] : []), ...(dkim.result ? ['DKIM'] : [])].join(' and ');
    checks.push(result('dmarc.alignment', domain, 'pass', `mail From ${domain} passes, aligned by ${by} (${modes})`));
  }
  if (rua) checks.push(result('dmarc.rua', domain, 'pass', `aggregate reports go to ${rua}`));
  else checks.push(result('dmarc.rua', domain, 'warn', `no rua=: you get no reports of who sends as ${domain} or what fails (RFC 7489 §7.2)`, [txtZoneLine(at, suggestion)]));
  return checks;
}

/** MTA-STS (RFC 8461 §3.1) and TLS-RPT (RFC 8460 §3): how the domain's own inbound mail is protected; for information. */
export async function transportChecks(domain: string, today: Date, resolve: Resolve): Promise<DoctorCheck[]> {
  const [sts, rpt] = await Promise.all([txtRecords(`_mta-sts.${domain}`, /^v=STSv1\s*(;|$)/i, resolve), txtRecords(`_smtp._tls.${domain}`, /^v=TLSRPTv1\s*(;|$)/i, resolve)]);
  const id = today.toISOString().slice(0, 10).replace(/-/g, '');
  const describe = (records: string[] | { failed: string }, what: string) =>
    !Array.isArray(records) ? `lookup failed (${records.failed})` : records.length === 1 ? `"${records[0]}"` : records.length ? `${records.length} records, which counts as none` : `none published${what}`;
  const stsFix = Array.isArray(sts) && sts.length === 1 ? [] : [txtZoneLine(`_mta-sts.${domain}`, `v=STSv1; id=${id}`), `and the policy at https://mta-sts.${domain}/.well-known/mta-sts.txt`];
  const rptFix = Array.isArray(rpt) && rpt.length === 1 ? [] : [txtZoneLine(`_smtp._tls.${domain}`, `v=TLSRPTv1; rua=mailto:tls-reports@${domain}`)];
  return [
    result('mta-sts.record', domain, 'info', `_mta-sts.${domain}: ${describe(sts, `: senders may deliver to ${domain} without TLS`)}`, stsFix),
    result('tls-rpt.record', domain, 'info', `_smtp._tls.${domain}: ${describe(rpt, ': no reports of failed TLS to your MX')}`, rptFix),
  ];
}
