import type { Config, Profile, Requirements } from '../config/index.ts';
import type { HeaderSection } from '../message/index.ts';
import { clip, failure, type Outcome } from '../smtp/index.ts';
import { describeDnsFailures, dkimAdvice, spfAdvice, type Prediction } from './preflight.ts';

/** RFC 2369 List-Unsubscribe, and RFC 8058 one-click: an https URI with List-Unsubscribe-Post. */
export type Unsubscribe = 'none' | 'link' | 'one-click';

/** What a destination's profile is judged on: the one prediction, and what the relay knows of the sending. */
export interface Sending {
  prediction: Prediction;
  /** The From domain. */
  author: string;
  egressIp: string;
  /** The egress PTR forward-confirms (identity/); `problem` says what is wrong otherwise, `inconclusive` that DNS could not tell. */
  egress: { verified: boolean; problem?: string; inconclusive?: boolean };
  /** DKIM keys the relay signed with, for the advice. */
  keys: number;
  unsubscribe: Unsubscribe;
  /** The session to this destination uses TLS. */
  tls: boolean;
}

type ProfileCheck = 'authentication' | 'dmarc' | 'unsubscribe' | 'ptr' | 'tls';

interface ProfileFailure {
  check: ProfileCheck;
  /** A few words for the record ("unauthenticated"). */
  label: string;
  /** What was found and what to publish or configure. */
  reason: string;
}

/** The record a domain publishes to start DMARC without changing delivery (RFC 7489 §6.3, p=none, with reports). */
function dmarcRecord(domain: string): string {
  return `_dmarc.${domain}. TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@${domain}"`;
}

/**
 * Which of a profile's requirements the message would fail at that destination, each with
 * what to fix. `who` names the destination's provider in the reasons.
 */
function judgeProfile(requires: Requirements, sending: Sending, who: string): ProfileFailure[] {
  const { prediction, author, egressIp } = sending;
  const failures: ProfileFailure[] = [];
  const spfPass = prediction.spf.result === 'pass';
  const dkimPass = prediction.dkim.some((d) => d.result === 'pass');
  const spfFix = spfAdvice(prediction.spf, egressIp);
  const dkimFix = dkimAdvice(author, sending.keys);
  if (requires.authentication === 'spf-or-dkim' && !spfPass && !dkimPass) {
    failures.push({ check: 'authentication', label: 'unauthenticated', reason: `${who} requires SPF or DKIM to pass and neither does: ${spfFix}; ${dkimFix}` });
  }
  if (requires.authentication === 'spf-and-dkim' && !(spfPass && dkimPass)) {
    const fixes = [...(spfPass ? [] : [spfFix]), ...(dkimPass ? [] : [dkimFix])];
    failures.push({ check: 'authentication', label: 'not authenticated by both SPF and DKIM', reason: `${who} requires SPF and DKIM to pass: ${fixes.join('; ')}` });
  }
  const dmarc = prediction.dmarc;
  const domain = dmarc.domain ?? author;
  const enforcing = dmarc.policy === 'reject' || dmarc.policy === 'quarantine';
  if (requires.dmarc === 'policy' && dmarc.result === 'fail' && enforcing) {
    failures.push({ check: 'dmarc', label: `DMARC fails (p=${dmarc.policy})`, reason: `DMARC of ${domain} fails and its policy is p=${dmarc.policy}: SPF or DKIM must pass aligned with ${domain} (${spfPass ? `SPF passes for ${prediction.spf.domain} but is not aligned` : spfFix}; ${dkimPass ? 'DKIM passes but d= is not aligned' : dkimFix})` });
  }
  if ((requires.dmarc === 'published' || requires.dmarc === 'aligned') && dmarc.result === 'none') {
    failures.push({ check: 'dmarc', label: 'no DMARC record', reason: `${who} requires a DMARC record for ${domain}: publish ${dmarcRecord(domain)}` });
  } else if (requires.dmarc === 'aligned' && dmarc.result !== 'pass') {
    failures.push({ check: 'dmarc', label: 'DMARC not aligned', reason: `${who} requires DMARC of ${domain} to pass: SPF or DKIM must pass aligned with ${domain} (${spfPass ? `SPF passes for ${prediction.spf.domain} but is not aligned` : spfFix}; ${dkimPass ? 'DKIM passes but d= is not aligned' : dkimFix})` });
  }
  if (requires.unsubscribe === 'one-click' && sending.unsubscribe !== 'one-click') {
    failures.push({ check: 'unsubscribe', label: 'no one-click unsubscribe', reason: `${who} requires one-click unsubscribe of bulk mail (RFC 8058): add "List-Unsubscribe: <https://…>" and "List-Unsubscribe-Post: List-Unsubscribe=One-Click"` });
  }
  if (requires.unsubscribe === 'link' && sending.unsubscribe === 'none') {
    failures.push({ check: 'unsubscribe', label: 'no unsubscribe link', reason: `${who} requires an unsubscribe link in bulk mail: add a List-Unsubscribe field (RFC 2369)` });
  }
  if (requires.ptr && !sending.egress.verified) {
    failures.push({ check: 'ptr', label: 'no forward-confirmed PTR', reason: `${who} requires the sending IP's PTR to name a host that resolves back to it: ${sending.egress.problem ?? `${egressIp} does not verify`}` });
  }
  if (requires.tls && !sending.tls) {
    failures.push({ check: 'tls', label: 'no TLS', reason: `${who} requires TLS, and the session to it has none` });
  }
  return failures;
}

/** What a destination's profile concluded, as the transaction record shows it. */
export interface ProfileVerdict {
  /** The provider whose profile applied, or `default`. */
  profile: string;
  bulk: boolean;
  verdict: 'pass' | 'refused' | 'deferred' | 'would refuse (monitor)' | 'would defer (monitor)';
  /** "gmail would refuse: unauthenticated" */
  summary?: string;
  failures?: string[];
  reasons?: string[];
  /** The refusal the destination gets instead of the message (enforce), or would have got (monitor). */
  outcome?: Outcome;
}

/**
 * The destination's verdict and, under `enforce`, its answer instead of the message. A
 * failure that rests on a lookup that failed for now is temporary (451 4.4.3, the lookup
 * named), as is a missing TLS session (451 4.7.5: the next session may have it); otherwise
 * RFC 7372 codes: 5.7.25 when only reverse DNS fails (§3.3), else 5.7.26 (§3.4), as Gmail
 * answers unauthenticated mail.
 */
export function judgeDestination(options: { requires: Profile; profile: string; bulk: boolean; sending: Sending; mode: 'enforce' | 'monitor' }): ProfileVerdict {
  const { sending, profile, bulk } = options;
  const failures = judgeProfile(bulk ? options.requires.bulk : options.requires.all, sending, bulk ? `${profile} (bulk mail)` : profile);
  if (failures.length === 0) return { profile, bulk, verdict: 'pass' };
  const reasons = failures.map((f) => f.reason);
  const dns = sending.prediction.dnsFailures;
  // The PTR lookup failing for now decides nothing either.
  const ptrUnknown = sending.egress.inconclusive === true && failures.some((f) => f.check === 'ptr');
  const onDns = ptrUnknown || (dns.length > 0 && failures.some((f) => f.check === 'authentication' || f.check === 'dmarc'));
  const temporary = onDns || failures.every((f) => f.check === 'tls');
  const summary = `${profile} would refuse: ${failures.map((f) => f.label).join(', ')}`;
  const why = [...(dns.length ? [describeDnsFailures(dns)] : []), ...(ptrUnknown ? [sending.egress.problem ?? 'the egress PTR lookup failed'] : [])].join(', ');
  const outcome = onDns
    ? failure('temporary', 451, '4.4.3', clip(`${profile}'s verdict cannot be predicted (${why}): try again later`, 450))
    : temporary
      ? failure('temporary', 451, '4.7.5', clip(`${reasons.join('; ')}; try again later`, 450))
      : failure('permanent', 550, failures.every((f) => f.check === 'ptr') ? '5.7.25' : '5.7.26', clip(`${summary}: ${reasons.join('; ')}`, 450));
  const verdict = options.mode === 'enforce' ? (temporary ? 'deferred' : 'refused') : temporary ? 'would defer (monitor)' : 'would refuse (monitor)';
  return { profile, bulk, verdict, summary, failures: failures.map((f) => f.label), reasons, outcome };
}

/**
 * What the message lacks of RFC 8058 one-click unsubscribe, each named for the reply: §3.1
 * wants a List-Unsubscribe field (RFC 2369) with an HTTPS URI, and List-Unsubscribe-Post
 * whose value is exactly List-Unsubscribe=One-Click. Empty when it has it.
 */
export function oneClickGaps(header: HeaderSection): string[] {
  const link = header.value('list-unsubscribe');
  const post = header.value('list-unsubscribe-post');
  const gaps: string[] = [];
  if (link === undefined) gaps.push('List-Unsubscribe (with an https URI)');
  else if (!/<https:\/\//i.test(link)) gaps.push('an https URI in List-Unsubscribe');
  if (post === undefined) gaps.push('List-Unsubscribe-Post: List-Unsubscribe=One-Click');
  else if (!/^List-Unsubscribe=One-Click$/i.test(post.trim())) gaps.push('List-Unsubscribe-Post: List-Unsubscribe=One-Click (its value is another)');
  return gaps;
}

/** RFC 2369 / RFC 8058: how the message offers to unsubscribe. */
export function unsubscribeOf(header: HeaderSection): Unsubscribe {
  if (header.value('list-unsubscribe') === undefined) return 'none';
  return oneClickGaps(header).length === 0 ? 'one-click' : 'link';
}

/**
 * Bulk, as the providers count it: the sending domain (or its nearest listed parent) or the
 * sending address is configured as bulk, or the message says it is list or bulk mail
 * (List-Id RFC 2919, List-Unsubscribe RFC 2369, Precedence: bulk or list).
 */
export function isBulk(header: HeaderSection, config: Config, addresses: { author: string; sender: string }): boolean {
  if (header.value('list-id') !== undefined || header.value('list-unsubscribe') !== undefined) return true;
  if (/^(bulk|list)$/i.test(header.value('precedence')?.trim() ?? '')) return true;
  const labels = addresses.author.slice(addresses.author.lastIndexOf('@') + 1).toLowerCase().split('.');
  for (let i = 0; i < labels.length - 1; i++) {
    const bulk = config.domains[labels.slice(i).join('.')]?.bulk;
    if (bulk === undefined) continue;
    if (typeof bulk === 'boolean') return bulk;
    const wanted = [addresses.author, addresses.sender].map((a) => a.toLowerCase());
    return bulk.some((address) => wanted.includes(address.toLowerCase()));
  }
  return false;
}
