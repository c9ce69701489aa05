import type { Config, RouteConfig } from '../config/index.ts';
import { isTemporaryDnsError, type Resolve } from '../dns/index.ts';
import type { Outcome } from '../proxy/outcome.ts';
import { failure } from '../proxy/outcome.ts';

export interface NextHop {
  /** Host name (MX exchange or route host). */
  name: string;
  port: number;
}

/** Where mail for a domain goes: the hosts to try, in order, and the key that identifies them. */
export interface Destination {
  /** Sessions are shared per destination within a transaction: equal keys, same hosts. */
  key: string;
  hops: NextHop[];
  /** Where the hops came from: a configured route, the MX records, or the domain itself (no MX). */
  via: 'route' | 'mx' | 'implicit';
}

function matches(pattern: string, domain: string): boolean {
  const p = pattern.toLowerCase();
  if (p === '*') return true;
  if (p.startsWith('*.')) return domain.endsWith(p.slice(1));
  return domain === p;
}

function findRoute(routes: RouteConfig[], domain: string): RouteConfig | undefined {
  return routes.find((route) => route.domains.some((pattern) => matches(pattern, domain)));
}

/** A fixed next hop (a route, or the bounce route) as a destination. */
export function routeDestination(next: { host: string; port: number }): Destination {
  return { key: `route:${next.host}:${next.port}`, hops: [{ name: next.host, port: next.port }], via: 'route' };
}

/** RFC 5321 §5.1: equal preferences are tried in random order to spread load. */
function byPreference(records: { exchange: string; priority: number }[]): string[] {
  return records
    .map((record) => ({ ...record, tie: Math.random() }))
    .sort((a, b) => a.priority - b.priority || a.tie - b.tie)
    .map((record) => record.exchange.toLowerCase().replace(/\.$/, ''));
}

/**
 * Resolves a recipient domain to its destination: a configured route, its MX set, or its
 * implicit MX (RFC 5321 §5.1: no MX but an address record means the domain itself).
 */
export async function resolveDestination(domain: string, config: Config['delivery'], resolve: Resolve): Promise<Destination | Outcome> {
  const route = findRoute(config.routes, domain);
  if (route) return routeDestination(route);

  let exchanges: string[];
  try {
    const records = await resolve(domain, 'MX');
    // RFC 7505: a single MX of "." says the domain accepts no mail.
    if (records.some((record) => record.exchange === '' || record.exchange === '.')) {
      return failure('permanent', 556, '5.1.10', `${domain} accepts no mail (null MX, RFC 7505)`);
    }
    exchanges = byPreference(records);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (isTemporaryDnsError(err)) {
      return failure('temporary', 451, '4.4.3', `MX lookup for ${domain} failed (${code}); try again later`);
    }
    if (code === 'ENOTFOUND') {
      return failure('permanent', 550, '5.1.2', `${domain} does not exist (NXDOMAIN)`);
    }
    exchanges = [];
  }
  const via = exchanges.length ? 'mx' : 'implicit';
  if (via === 'implicit') exchanges = [domain];
  return { key: `mx:${exchanges.join(',')}:${config.port}`, hops: exchanges.map((name) => ({ name, port: config.port })), via };
}
