import { promises as dns, type MxRecord } from 'node:dns';
import net from 'node:net';
import type { Config } from '../config/index.ts';

/**
 * The relay's one resolver, in the `dns.promises.resolve(name, rrtype)` shape mailauth takes as
 * its `resolver`, so its SPF/DKIM/DMARC lookups and the relay's own go the same way.
 * Errors keep node's codes (ENOTFOUND, ENODATA, ESERVFAIL, ETIMEOUT…): callers decide
 * temporary versus permanent from them.
 */
export interface Resolve {
  (name: string, rrtype: 'A' | 'AAAA' | 'CNAME' | 'NS' | 'PTR'): Promise<string[]>;
  (name: string, rrtype: 'MX'): Promise<MxRecord[]>;
  (name: string, rrtype: 'TXT'): Promise<string[][]>;
  (name: string, rrtype: string): Promise<unknown>;
}

export function createResolver(config: Config['dns']): Resolve {
  const resolver = new dns.Resolver({ timeout: config.timeout, tries: config.tries });
  if (config.servers?.length) resolver.setServers(config.servers);
  return ((name: string, rrtype: string) => resolver.resolve(name, rrtype)) as Resolve;
}

/** The in-addr.arpa / ip6.arpa name whose PTR names an address (RFC 1035 §3.5, RFC 3596 §2.5). */
export function reverseName(ip: string): string {
  if (net.isIPv4(ip)) return `${ip.split('.').reverse().join('.')}.in-addr.arpa`;
  const [head, tail] = ip.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = tail === undefined ? left : [...left, ...Array(8 - left.length - right.length).fill('0'), ...right];
  const full = groups.map((group) => group.padStart(4, '0'));
  return `${full.join('').split('').reverse().join('.')}.ip6.arpa`;
}

/** DNS error codes that mean "try again later", never "does not exist". */
export function isTemporaryDnsError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code !== 'ENOTFOUND' && code !== 'ENODATA';
}
