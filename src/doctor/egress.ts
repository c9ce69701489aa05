import { readFileSync } from 'node:fs';
import net from 'node:net';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import type { EgressConfig } from '../config/index.ts';
import { isTemporaryDnsError, type Resolve } from '../dns/index.ts';
import { verifyEgress, type Egress } from '../identity/index.ts';
import { reverseName } from '../ip/index.ts';
import { result, type DoctorCheck } from './report.ts';

const SHIPPED = new URL('./blocklists.yaml', import.meta.url);

const ipv4 = z.string().refine((value) => net.isIPv4(value), { message: 'must be an IPv4 address' });

/** src/doctor/blocklists.yaml: what each list's answers mean. */
const blocklistsSchema = z.strictObject({
  lists: z.array(
    z.strictObject({
      name: z.string().min(1),
      zones: z.array(z.string().min(1)).min(1),
      ipv6: z.boolean(),
      removal: z.string().min(1),
      answers: z.record(ipv4, z.strictObject({ list: z.string().min(1), meaning: z.string().min(1) })),
    }),
  ),
  refusals: z.record(ipv4, z.string().min(1)),
});

export type Blocklists = z.infer<typeof blocklistsSchema>;

/** The shipped meanings, read and checked each run (a SIGHUP picks up an edited file). */
export function loadBlocklists(): Blocklists {
  return blocklistsSchema.parse(parseYaml(readFileSync(SHIPPED, 'utf8')));
}

/** RFC 1035 §3.5: the name the relay's PTR is at; and the A (or AAAA) record of its host name. */
function identityRecords(ip: string, host: string): string[] {
  return [`${reverseName(ip)}. IN PTR ${host}.`, `${host}. IN ${net.isIPv6(ip) ? 'AAAA' : 'A'} ${ip}`];
}

const PTR_OWNER = "(the PTR is published by whoever holds the address block: ask the ISP or hosting provider)";

/**
 * PTR, forward confirmation and HELO, as Gmail, Microsoft and Yahoo check them (the seeds'
 * "a PTR that resolves back, a HELO that matches it"), then the blocklists. `host`: the name
 * to suggest when there is no PTR to go by.
 */
export async function egressChecks(egress: EgressConfig, host: string, zones: readonly string[], lists: Blocklists, resolve: Resolve): Promise<DoctorCheck[]> {
  const { ip } = egress;
  const reverse = reverseName(ip);
  const checks: DoctorCheck[] = [];
  let names: string[] | undefined;
  try {
    names = (await resolve(reverse, 'PTR')).map((name) => name.toLowerCase().replace(/\.$/, ''));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (isTemporaryDnsError(err)) checks.push(result('egress.ptr', ip, 'warn', `lookup of PTR ${reverse} failed (${code}): nothing is known until DNS answers`));
    else checks.push(result('egress.ptr', ip, 'fail', `no PTR record at ${reverse} (${code}): Gmail, Microsoft and Yahoo distrust or refuse mail from an address without one`, [...identityRecords(ip, egress.helo === 'auto' ? host : egress.helo), PTR_OWNER]));
  }
  if (names) {
    checks.push(result('egress.ptr', ip, 'pass', `${reverse} names ${names.join(', ')}`));
    checks.push(...(await identityChecks(egress, names, host, resolve)));
  }
  checks.push(...(await Promise.all(zones.map((zone) => blocklistCheck(ip, zone, lists, resolve)))).flat());
  return checks;
}

/** FCrDNS and the HELO, judged by src/identity's own verification, so doctor and the relay agree. */
async function identityChecks(egress: EgressConfig, names: string[], host: string, resolve: Resolve): Promise<DoctorCheck[]> {
  const { ip } = egress;
  // helo: auto is the PTR name that resolves back: whether one does is forward confirmation.
  const confirmed = await verifyEgress({ ...egress, helo: 'auto' }, resolve);
  const inUse: Egress = egress.helo === 'auto' ? confirmed : await verifyEgress(egress, resolve);
  const checks: DoctorCheck[] = [];
  if (confirmed.verified) checks.push(result('egress.fcrdns', ip, 'pass', `${confirmed.helo} resolves back to ${ip}`));
  else if (confirmed.inconclusive) checks.push(result('egress.fcrdns', ip, 'warn', `${confirmed.problem}: nothing is known until DNS answers`));
  else checks.push(result('egress.fcrdns', ip, 'fail', `${confirmed.problem} (receivers want forward-confirmed reverse DNS)`, [identityRecords(ip, names[0])[1]]));
  if (names.includes(inUse.helo)) {
    checks.push(result('egress.helo', ip, 'pass', `the relay says EHLO ${inUse.helo} (helo: ${egress.helo}), the PTR name`));
  } else {
    // helo: auto fails only on a PTR that names no host (the relay then says its address literal).
    const fix = egress.helo === 'auto' ? [...identityRecords(ip, host), PTR_OWNER] : [`egress ${ip}: helo: auto (or helo: ${names[0]}) in the configuration`, 'or', ...identityRecords(ip, egress.helo), PTR_OWNER];
    checks.push(result('egress.helo', ip, 'fail', `the relay says EHLO ${inUse.helo} (helo: ${egress.helo}), but the PTR of ${ip} names ${names.join(', ')}: receivers compare the two`, fix));
  }
  return checks;
}

/** The list a configured zone belongs to: the zone itself or a parent of it (a keyed zone). */
function listOf(zone: string, lists: Blocklists): Blocklists['lists'][number] | undefined {
  return lists.lists.find((list) => list.zones.some((known) => zone === known || zone.endsWith(`.${known}`)));
}

/**
 * One DNS blocklist (DNSBL, RFC 5782 §2): an A answer is a listing, its code says which;
 * NXDOMAIN is not listed. 127.255.255.0/24 is the list refusing the query, never a listing.
 */
async function blocklistCheck(ip: string, zone: string, lists: Blocklists, resolve: Resolve): Promise<DoctorCheck[]> {
  const list = listOf(zone, lists);
  // Most lists take IPv4 only (RFC 5782 keeps IPv6 lists apart): one not known to take IPv6 is not asked.
  if (net.isIPv6(ip) && !list?.ipv6) return [];
  const name = `${reverseName(ip).replace(/\.(in-addr|ip6)\.arpa$/, '')}.${zone}`;
  let answers: string[];
  try {
    answers = await resolve(name, 'A');
  } catch (err) {
    if (!isTemporaryDnsError(err)) return [result('egress.blocklist', ip, 'pass', `not listed in ${zone}`)];
    return [result('egress.blocklist', ip, 'warn', `lookup of ${name} failed (${(err as NodeJS.ErrnoException).code}): not known whether listed in ${zone}`)];
  }
  const refused = answers.filter((a) => a.startsWith('127.255.255.'));
  if (refused.length) {
    const why = refused.map((a) => `${a}: ${lists.refusals[a] ?? 'an error answer'}`).join(', ');
    return [
      result('egress.blocklist', ip, 'warn', `${zone} refused the query (${why}): the resolver cannot ask this list, which says nothing of ${ip}`, [
        'dns.servers: a resolver of your own that queries the list directly, not a public one (8.8.8.8, 1.1.1.1, 9.9.9.9)',
        ...(list?.name === 'Spamhaus ZEN' ? ['or the keyed zone of a free Spamhaus DQS account in doctor.blocklists: <key>.zen.dq.spamhaus.net'] : []),
      ]),
    ];
  }
  const listed = answers.filter((a) => a.startsWith('127.'));
  if (listed.length) {
    const codes = listed.map((a) => {
      const meaning = list?.answers[a];
      return meaning ? `${a} ${meaning.list}: ${meaning.meaning}` : a;
    });
    return [result('egress.blocklist', ip, 'fail', `listed in ${zone} (${codes.join('; ')}): receivers that use ${list?.name ?? zone} refuse its mail`, [`find and stop the cause, then ask for removal: ${list?.removal ?? `the operator of ${zone}`}`])];
  }
  return [result('egress.blocklist', ip, 'warn', `${zone} answered ${answers.join(', ')}, which is no blocklist code: the zone may have lapsed, or the resolver rewrites NXDOMAIN`, ['dns.servers: a resolver that passes NXDOMAIN through; or remove the zone from doctor.blocklists'])];
}
