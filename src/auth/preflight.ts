import net from 'node:net';
import { Readable } from 'node:stream';
import type { AuthenticateResult, DNSResolver, SPFResult } from 'mailauth';
// mailauth's parts, not its index: that loads ARC, BIMI and their parsers too (~12 MB of a
// relay's memory), and its authenticate() is needed only for messages signed before the relay.
import { dmarc as evaluateDmarc } from 'mailauth/lib/dmarc/index.js';
import { spf } from 'mailauth/lib/spf/index.js';
import { validateTerms } from 'mailauth/lib/spf/syntax.js';
import type { Config } from '../config/index.ts';
import type { Resolve } from '../dns/index.ts';
import { canonicalAddress } from '../ip/index.ts';
import { clip, failure, type Outcome } from '../smtp/index.ts';
import type { SigningKey } from './dkim/keys.ts';
import { checkPublished } from './dkim/record.ts';

/** What the relay predicts a receiver will conclude, and what to do about it. */
export type Check = 'spf' | 'dkim' | 'dmarc';

export interface SpfVerdict {
  result: 'pass' | 'fail' | 'softfail' | 'neutral' | 'none' | 'permerror' | 'temperror';
  /** The domain whose record was evaluated: MAIL FROM's, or the HELO name for a null sender. */
  domain: string;
  /** The SPF record that decided it, when there was one. */
  record?: string;
  /** Lookups of the SPF chain that failed for now; present only when some did. */
  dnsFailures?: DnsFailure[];
  /**
   * For permerror and temperror, what caused it in words: the include target without a
   * record, a limit of RFC 7208 §4.6.4, the term with a syntax error, the lookup that failed.
   */
  cause?: string;
}

/**
 * What an evaluation spent of RFC 7208 §4.6.4's limits: the lookups that count (include, a,
 * mx, ptr, exists, redirect; at most `limit`, 10) and those that found nothing (at most 2).
 * A permerror with more than a limit allows is that limit's.
 */
export interface SpfLookups {
  count: number;
  limit: number;
  void: number;
}

function lookupsOf(result: SPFResult): SpfLookups | undefined {
  const lookups = (result as SPFResult & { lookups?: SpfLookups }).lookups;
  return lookups && { count: lookups.count, limit: lookups.limit, void: lookups.void };
}

/**
 * A lookup that failed for now (a timeout, SERVFAIL, no answer over TCP after truncation):
 * its answer could have changed the verdict, so only a retry can tell (RFC 7208 §2.6.6
 * temperror, RFC 6376 §6.1.2 TEMPFAIL, RFC 7489 §6.6.3).
 */
export interface DnsFailure {
  /** `TXT _dmarc.example.com` */
  lookup: string;
  code: string;
  /** `host:port` of the server asked last. */
  server?: string;
}

/** Hands lookups on to `resolve`, noting each one that failed for now. */
function recording(resolve: Resolve, failures: DnsFailure[]): Resolve {
  return (async (name: string, rrtype: string) => {
    try {
      return await resolve(name, rrtype);
    } catch (err) {
      const { code, server } = err as NodeJS.ErrnoException & { server?: string };
      // Answers that exist (NXDOMAIN, NODATA) and names that cannot (EBADNAME) are definite.
      if (code !== 'ENOTFOUND' && code !== 'ENODATA' && code !== 'EBADNAME') {
        failures.push({ lookup: `${rrtype} ${name.replace(/\.$/, '')}`, code: code ?? 'error', ...(server && { server }) });
      }
      throw err;
    }
  }) as Resolve;
}

/** "DNS lookup of TXT _dmarc.example.com at 10.0.0.53:53 failed (ETIMEOUT)", for each failure. */
export function describeDnsFailures(failures: DnsFailure[]): string {
  return failures.map((f) => `DNS lookup of ${f.lookup}${f.server ? ` at ${f.server}` : ''} failed (${f.code})`).join(', ');
}

export interface Prediction {
  spf: SpfVerdict;
  dkim: { result: string; domain?: string; selector?: string; aligned: boolean }[];
  dmarc: { result: string; policy?: string; domain?: string; alignedBy?: 'spf' | 'dkim' };
  /** The Authentication-Results a receiver would write, on one line. */
  authenticationResults: string;
  /** Lookups that failed for now while predicting (SPF chain, DKIM keys, DMARC records). */
  dnsFailures: DnsFailure[];
}

export interface Policy {
  domain: string;
  mode: 'enforce' | 'monitor';
  require: Check[];
}

export interface PreflightContext {
  resolve: Resolve;
  ip: string;
  helo: string;
}

/**
 * SPF by RFC 7208 to the letter (mailauth's `strict`), not mailauth's lenient default, which
 * differs where the RFC is explicit: a bare `ip6` is a syntax error (§5.6), so is `exp=`
 * twice (§6) or with a domain-spec that does not parse or uses the macro letters reserved
 * for explanation text (§6.2, §7.1: c, r, t); and every name a macro expands to that §7.1
 * allows is looked up, not refused. A receiver that follows the RFC concludes that, and the
 * relay refuses and advises on what the RFC says, not on one library's leniency.
 */
const STRICT = true;

/** mailauth asks for records by type; our resolver has the same shape. */
function resolver(resolve: Resolve): DNSResolver {
  return resolve as unknown as DNSResolver;
}

/** The domain's policy: its own entry, else its nearest configured parent's, else the defaults. */
export function policyFor(config: Config, domain: string): Policy {
  const labels = domain.toLowerCase().split('.');
  let mode: Policy['mode'] | undefined;
  let require: Check[] | undefined;
  for (let i = 0; i < labels.length - 1 && !(mode && require); i++) {
    const settings = config.domains[labels.slice(i).join('.')];
    mode ??= settings?.policy;
    require ??= settings?.require;
  }
  return { domain, mode: mode ?? config.defaultPolicy, require: require ?? config.defaultRequire };
}

/**
 * SPF exactly as the receiver will evaluate it (RFC 7208): the egress public address, the
 * MAIL FROM domain (the HELO identity for a null sender), the egress HELO.
 */
export async function checkSpf(sender: string, ctx: PreflightContext): Promise<SpfVerdict> {
  return (await evaluateSpf(sender, ctx)).verdict;
}

/** checkSpf's evaluation, with what it spent of the lookup limits (what `doctor` reports). */
export async function evaluateSpf(sender: string, ctx: PreflightContext): Promise<{ verdict: SpfVerdict; lookups?: SpfLookups }> {
  const seen: Seen = { failures: [], spfRecords: [], empty: [] };
  const result = await spf({ sender, ip: ctx.ip, helo: ctx.helo, mta: ctx.helo, resolver: resolver(observing(ctx.resolve, seen)), strict: STRICT });
  return { verdict: spfVerdictOf(result, seen), lookups: lookupsOf(result) };
}

/** What the lookups of one evaluation saw: mailauth gives the verdict, not always why. */
interface Seen {
  failures: DnsFailure[];
  /** Every SPF record fetched (RFC 7208 §4.5: a TXT string starting "v=spf1"), by the domain that published it. */
  spfRecords: { domain: string; record: string }[];
  /** Lookups answered NXDOMAIN or NODATA: what RFC 7208 §4.6.4 counts as void. */
  empty: string[];
}

/** `recording`, and also the SPF records and the void answers the lookups got. */
function observing(resolve: Resolve, seen: Seen): Resolve {
  const recorded = recording(resolve, seen.failures);
  return (async (name: string, rrtype: string) => {
    const lookup = `${rrtype} ${name.replace(/\.$/, '')}`;
    let answer: unknown;
    try {
      answer = await recorded(name, rrtype);
    } catch (err) {
      const { code } = err as NodeJS.ErrnoException;
      if (code === 'ENOTFOUND' || code === 'ENODATA') seen.empty.push(lookup);
      throw err;
    }
    if (rrtype === 'TXT') {
      for (const chunks of answer as string[][]) {
        const record = chunks.join('');
        if (/^v=spf1(?: |$)/i.test(record)) seen.spfRecords.push({ domain: name.replace(/\.$/, '').toLowerCase(), record });
      }
    }
    return answer;
  }) as Resolve;
}

/** The lookups of the DKIM keys and DMARC records in one authenticate(); all the others are SPF's. */
function isSpfLookup(lookup: string): boolean {
  const name = lookup.slice(lookup.indexOf(' ') + 1).toLowerCase();
  return !name.includes('._domainkey.') && !name.startsWith('_dmarc.');
}

function spfVerdictOf(result: SPFResult, seen: Seen): SpfVerdict {
  const verdict: SpfVerdict = { result: result.status.result as SpfVerdict['result'], domain: result.domain, record: result.rr || undefined };
  if (seen.failures.length) verdict.dnsFailures = seen.failures;
  if (verdict.result === 'permerror' || verdict.result === 'temperror') verdict.cause = spfCause(verdict, result, seen);
  return verdict;
}

/** A quoted SPF term whose target is `target`, as `include:x` / `redirect=x` in a record seen, when one names it literally. */
function termNaming(target: string, seen: Seen): { domain: string; term: string } | undefined {
  for (const { domain, record } of seen.spfRecords) {
    const term = record.split(' ').find((t) => new RegExp(`^[+?~-]?(include:|redirect=)${target.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.?$`, 'i').test(t));
    if (term) return { domain, term };
  }
  return undefined;
}

/** mailauth's validator, which throws (rather than answers) on some malformed terms: no verdict then. */
function termError(terms: string[]): string | false {
  try {
    return validateTerms(terms);
  } catch {
    return false;
  }
}

/** The first syntax error of the SPF records seen (RFC 7208 §4.6), with the term it is in. */
function syntaxError(seen: Seen): { domain: string; term?: string; detail: string } | undefined {
  for (const { domain, record } of seen.spfRecords) {
    // mailauth refuses a record with characters outside printable ASCII before any syntax check
    // (its validator is not written for them): that cause is its own text.
    if (/[^\x20-\x7E]/.test(record)) continue;
    const terms = record.split(' ').filter(Boolean).slice(1);
    const detail = termError(terms);
    if (!detail) continue;
    // A term wrong by itself; else the error is between terms (a second redirect= or exp=).
    return { domain, term: terms.find((term) => termError([term])), detail };
  }
  return undefined;
}

/**
 * Why the evaluation ended in permerror or temperror. mailauth says which rule it ended on
 * (its status comment); what it leaves out (which record, which term, which lookups) comes
 * from what the lookups saw.
 */
function spfCause(verdict: SpfVerdict, result: SPFResult, seen: Seen): string {
  const said = /during lookup of \S*: (.*)$/s.exec(result.status.comment ?? '')?.[1] ?? result.status.comment ?? verdict.result;
  const lookups = lookupsOf(result);
  if (verdict.result === 'temperror') return seen.failures.length ? describeDnsFailures(seen.failures) : said;
  const missing = /^no SPF records found for (\S+)$/.exec(said);
  if (missing) {
    const target = missing[1];
    const named = termNaming(target, seen);
    const where = named ? `"${named.term}" in the SPF record of ${named.domain}` : `an include: or redirect= of the SPF record of ${verdict.domain}`;
    return `${where} names ${target}, which publishes no SPF record (a permerror, RFC 7208 §5.2, §6.1)`;
  }
  if (said === 'Too many DNS requests') {
    const limit = lookups?.limit ?? 10;
    return `the SPF record of ${verdict.domain} needs more than ${limit} DNS lookups (include, a, mx, ptr, exists and redirect each count; the limit of RFC 7208 §4.6.4), the evaluation stopped at lookup ${lookups?.count ?? limit + 1}`;
  }
  if (said === 'Too many void DNS results') {
    return `more than 2 lookups of the SPF record of ${verdict.domain} found no such name or no record (the void-lookup limit of RFC 7208 §4.6.4): ${seen.empty.join(', ')}`;
  }
  const multiple = /^multiple SPF records found for (\S+)$/.exec(said);
  if (multiple) return `${multiple[1]} publishes more than one SPF record (RFC 7208 §4.5): keep exactly one`;
  const syntax = syntaxError(seen);
  if (syntax) return `the SPF record of ${syntax.domain} has a syntax error${syntax.term ? ` in "${syntax.term}"` : ''}: ${syntax.detail} (RFC 7208 §4.6)`;
  return `the SPF record of ${verdict.domain} is broken: ${said}`;
}

/** RFC 2045 §5.1 token: what strict mode requires of an authserv-id (RFC 8601 §2.2). */
const TOKEN = /^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$/;

/**
 * Who writes the predicted Authentication-Results (RFC 8601 §2.5): the egress HELO, a host
 * name as a rule, else the relay by its name, e.g. for an address-literal HELO (RFC 5321
 * §4.1.3) or a PTR name that is no token.
 */
function authservId(helo: string): string {
  return TOKEN.test(helo) ? helo : 'hygiene-relay';
}

/** The receiver's verdict on the signed message: mailauth's authenticate(), as Gmail's would run. */
export async function predict(message: AsyncIterable<Buffer>, sender: string, ctx: PreflightContext): Promise<Prediction> {
  const seen: Seen = { failures: [], spfRecords: [], empty: [] };
  const dnsFailures = seen.failures;
  const { authenticate } = await import('mailauth');
  const result: AuthenticateResult = await authenticate(Readable.from(message), {
    ip: ctx.ip,
    helo: ctx.helo,
    sender,
    mta: authservId(ctx.helo),
    resolver: resolver(observing(ctx.resolve, seen)),
    // mailauth has one switch for every check: DKIM and DMARC are judged by their RFCs too.
    strict: STRICT,
    disableArc: true,
    disableBimi: true,
  });
  const dmarc = result.dmarc || undefined;
  const alignedDkim = dmarc?.alignment?.dkim?.result;
  const spfResult = result.spf || undefined;
  return {
    // The SPF part of what the lookups saw: DKIM keys were fetched before it, DMARC records after.
    spf: spfResult
      ? spfVerdictOf(spfResult, { failures: dnsFailures.filter((f) => isSpfLookup(f.lookup)), spfRecords: seen.spfRecords, empty: seen.empty.filter(isSpfLookup) })
      : { result: 'none', domain: '' },
    dkim: result.dkim.results
      .filter((r) => r.signingDomain)
      .map((r) => ({ result: r.status.result, domain: r.signingDomain, selector: r.selector, aligned: Boolean(alignedDkim) && r.status.result === 'pass' && r.signingDomain === alignedDkim })),
    dmarc: {
      result: dmarc?.status.result ?? 'none',
      policy: dmarc?.policy,
      domain: dmarc?.status.header?.from,
      alignedBy: dmarc?.alignment?.spf?.result ? 'spf' : alignedDkim ? 'dkim' : undefined,
    },
    authenticationResults: result.headers
      .replace(/^Received-SPF:.*(\r?\n[ \t].*)*\r?\n/m, '')
      .replace(/^Authentication-Results:\s*/, '')
      .replace(/\r?\n[ \t]+/g, ' ')
      .trim(),
    dnsFailures,
  };
}

/**
 * The same verdict composed from what the relay already knows, for messages too large to
 * parse again: SPF as checked at MAIL FROM (same address, sender and HELO), each signature
 * the relay made checked against its published key (its hashes are right by construction),
 * and mailauth's DMARC evaluation of those. Signatures the message already carried cannot be
 * judged this way and come back as `unknown`.
 */
export async function predictFromParts(options: {
  spf: SpfVerdict;
  sender: string;
  author: string;
  keys: readonly SigningKey[];
  otherSignatures: number;
  resolve: Resolve;
}): Promise<Prediction> {
  const dnsFailures: DnsFailure[] = [...(options.spf.dnsFailures ?? [])];
  const resolve = recording(options.resolve, dnsFailures);
  const dkim: Prediction['dkim'] = await Promise.all(
    options.keys.map(async (key) => {
      const published = await checkPublished(key, resolve);
      const result = { matches: 'pass', mismatch: 'fail', revoked: 'fail', missing: 'permerror', unreadable: 'temperror' }[published.state];
      return { result, domain: key.domain, selector: key.selector, aligned: false };
    }),
  );
  for (let i = 0; i < options.otherSignatures; i++) dkim.push({ result: 'unknown', aligned: false });
  const verdict = await evaluateDmarc({
    headerFrom: options.author,
    spfDomains: options.spf.result === 'pass' ? [options.spf.domain] : [],
    dkimDomains: dkim.filter((d) => d.result === 'pass' && d.domain).map((d) => ({ domain: d.domain! })),
    resolver: resolver(resolve),
  });
  const alignedDkim = verdict ? verdict.alignment?.dkim?.result : undefined;
  for (const d of dkim) d.aligned = d.result === 'pass' && d.domain === alignedDkim;
  const dmarcResult = verdict ? verdict.status.result : 'none';
  // In the order mailauth writes them (DKIM, SPF, DMARC): one form of the line, whichever way it was predicted.
  const parts = [
    ...dkim.map((d) => `dkim=${d.result}${d.domain ? ` header.d=${d.domain} header.s=${d.selector}` : ''}`),
    `spf=${options.spf.result} smtp.mailfrom=${options.sender || '<>'}`,
    `dmarc=${dmarcResult}${verdict && verdict.policy ? ` (p=${verdict.policy})` : ''} header.from=${options.author}`,
  ];
  return {
    spf: options.spf,
    dkim,
    dmarc: {
      result: dmarcResult,
      policy: verdict ? verdict.policy : undefined,
      domain: options.author,
      alignedBy: verdict && verdict.alignment?.spf?.result ? 'spf' : alignedDkim ? 'dkim' : undefined,
    },
    authenticationResults: parts.join('; '),
    dnsFailures,
  };
}

/** The SPF mechanism that authorizes an address (RFC 7208 §5.6); an IPv4-mapped one is matched by ip4 (§5). */
export function spfMechanism(ip: string): string {
  const address = canonicalAddress(ip) ?? ip;
  return net.isIPv6(address) ? `ip6:${address}` : `ip4:${address}`;
}

/** What an admin must publish so that SPF passes for this egress address. */
export function spfAdvice(verdict: SpfVerdict, ip: string): string {
  switch (verdict.result) {
    case 'pass':
      return `SPF passes for ${verdict.domain}`;
    case 'none':
      return `${verdict.domain} publishes no SPF record: publish "v=spf1 ${spfMechanism(ip)} -all" (or add ${spfMechanism(ip)} to the one you intended)`;
    case 'permerror':
      return `SPF of ${verdict.domain} is a permanent error${verdict.record ? ` (its record: "${verdict.record}")` : ''}: ${verdict.cause ?? 'its record is broken'}`;
    case 'temperror':
      return `SPF of ${verdict.domain} could not be checked: ${verdict.cause ?? (verdict.dnsFailures ? describeDnsFailures(verdict.dnsFailures) : 'a DNS lookup failed')}`;
    default:
      return `the SPF record of ${verdict.domain}${verdict.record ? ` ("${verdict.record}")` : ''} does not authorize ${ip} (${verdict.result}): add ${spfMechanism(ip)} to it`;
  }
}

export interface PolicyVerdict {
  /** The checks the policy requires that would not pass. */
  failed: Check[];
  /** One sentence per failed check: what was found and what to publish. */
  reasons: string[];
  /** What the client is answered when the policy enforces; undefined when every required check passes. */
  refusal?: Outcome;
}

/** What an admin does about a DKIM failure of the author domain. */
export function dkimAdvice(author: string, keys: number): string {
  return keys === 0
    ? `no DKIM key is configured for ${author}: create one with "hygiene-relay dkim keygen --domain ${author} --selector s1", publish its TXT record and add it under domains`
    : `the DKIM signature of ${author} does not verify: run "hygiene-relay dkim check" and publish the record it names`;
}

// A refusal names every cause; wrapped (src/smtp wrapReplyText) that is three or four reply
// lines. Longer is clipped for the client only: the record keeps every reason whole.
const REPLY_TEXT = 1500;

/**
 * The refusal for failed checks. A DNS failure decides nothing, only a retry can tell:
 * 451 4.4.3 (RFC 7208 §8.6 for SPF, the same for DKIM and DMARC lookups). Otherwise the RFC
 * 7372 code of what failed: X.7.23 SPF validation failed (§3.2), X.7.20 no passing DKIM
 * signature (§3.1), X.7.26 several checks failed (§3.4), which a DMARC failure always is
 * (neither SPF nor DKIM passed aligned), as Gmail answers it.
 */
function refusalOf(failed: Check[], temporary: boolean, reasons: string[], domain: string, dnsFailures: DnsFailure[]): Outcome | undefined {
  if (failed.length === 0) return undefined;
  if (temporary) {
    const why = dnsFailures.length ? describeDnsFailures(dnsFailures) : 'DNS';
    return failure('temporary', 451, '4.4.3', clip(`${failed.join(', ')} could not be checked for ${domain} (${why}): try again later`, REPLY_TEXT));
  }
  const enhanced = failed.length > 1 || failed[0] === 'dmarc' ? '5.7.26' : failed[0] === 'spf' ? '5.7.23' : '5.7.20';
  return failure('permanent', 550, enhanced, clip(reasons.join('; '), REPLY_TEXT));
}

/**
 * Which required checks the prediction fails, why in words an admin can act on, and the
 * answer that gives. `keys`: how many DKIM keys the relay signed the message with.
 */
export function judge(policy: Policy, prediction: Prediction, advice: { ip: string; keys: number }): PolicyVerdict {
  const failed: Check[] = [];
  const reasons: string[] = [];
  let temporary = false;
  const dkim = dkimAdvice(policy.domain, advice.keys);
  if (policy.require.includes('spf') && prediction.spf.result !== 'pass') {
    failed.push('spf');
    temporary ||= prediction.spf.result === 'temperror';
    reasons.push(spfAdvice(prediction.spf, advice.ip));
  }
  const dkimPass = prediction.dkim.some((d) => d.result === 'pass');
  // A signature the message already carried that could not be checked may well pass: no refusal on its account.
  const dkimUnknown = prediction.dkim.some((d) => d.result === 'unknown');
  if (policy.require.includes('dkim') && !dkimPass && !dkimUnknown) {
    failed.push('dkim');
    temporary ||= prediction.dkim.some((d) => d.result === 'temperror');
    reasons.push(dkim);
  }
  // No DMARC record: nothing a receiver would enforce, so it is not a failure (the record notes it).
  if (policy.require.includes('dmarc') && prediction.dmarc.result !== 'pass' && prediction.dmarc.result !== 'none' && !dkimUnknown) {
    failed.push('dmarc');
    temporary ||= prediction.dmarc.result === 'temperror' || prediction.spf.result === 'temperror';
    const spfPart = prediction.spf.result === 'pass' ? `SPF passes for ${prediction.spf.domain} but is not aligned with ${prediction.dmarc.domain}` : spfAdvice(prediction.spf, advice.ip);
    const dkimPart = dkimPass ? `DKIM passes but d= is not aligned with ${prediction.dmarc.domain}` : dkim;
    reasons.push(`DMARC of ${prediction.dmarc.domain} would fail (p=${prediction.dmarc.policy ?? 'none'}): ${spfPart}; ${dkimPart}; either one aligned pass is enough`);
  }
  // Any lookup that failed for now could have turned a failing check into a pass.
  if (prediction.dnsFailures.length) temporary = true;
  return { failed, reasons, refusal: refusalOf(failed, temporary, reasons, policy.domain, prediction.dnsFailures) };
}

const ACCEPTED: Outcome = { kind: 'accepted', reply: { code: 250, lines: ['OK'] } };

/**
 * MAIL FROM: SPF exactly as the receiver will evaluate it, and what the sending domain's
 * policy makes of it now. Refused at once only when the policy enforces SPF; otherwise the
 * verdict waits for the whole message. A lookup that failed is temperror (RFC 7208 §2.6.6),
 * answered 451 4.4.3 (§8.6); a failing SPF is 550 5.7.23 (RFC 7372 §3.2).
 */
export async function checkSender(sender: string, config: Config, ctx: PreflightContext): Promise<{ spf: SpfVerdict; outcome: Outcome }> {
  let spf: SpfVerdict;
  try {
    spf = await checkSpf(sender, ctx);
  } catch (err) {
    spf = { result: 'temperror', domain: sender ? sender.slice(sender.lastIndexOf('@') + 1).toLowerCase() : ctx.helo, record: (err as Error).message };
  }
  const policy = policyFor(config, spf.domain);
  if (policy.mode !== 'enforce' || !policy.require.includes('spf') || spf.result === 'pass') return { spf, outcome: ACCEPTED };
  if (spf.result === 'temperror' || spf.dnsFailures) {
    const why = spf.dnsFailures ? describeDnsFailures(spf.dnsFailures) : 'DNS';
    return { spf, outcome: failure('temporary', 451, '4.4.3', clip(`SPF of ${spf.domain} could not be checked (${why}); try again later`, REPLY_TEXT)) };
  }
  return { spf, outcome: failure('permanent', 550, '5.7.23', clip(`SPF would fail at the receiver: ${spfAdvice(spf, ctx.ip)}`, REPLY_TEXT)) };
}

