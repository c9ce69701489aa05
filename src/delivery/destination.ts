import { createHash } from 'node:crypto';
import type { Config, RouteConfig } from '../config/index.ts';
import { isTemporaryDnsError, type Resolve } from '../dns/index.ts';
import { failure, type Outcome } from '../smtp/index.ts';
import { mxMatches, type MtaSts, type StsPolicy } from './mta-sts.ts';

export interface NextHop {
  /** Host name (MX exchange or route host): the name its certificate must carry when TLS is verified. */
  name: string;
  port: number;
  /** MTA-STS testing mode: this MX is not in the policy (enforce would not use it). */
  outsidePolicy?: boolean;
}

/** What TLS a destination needs; part of its key, so sessions are shared only under the same policy. */
export interface TlsPolicy {
  /**
   * Who demands STARTTLS with a certificate that verifies for the hop's name (`delivery.tls.required`,
   * a route's `tls: required`, `MTA-STS enforce`, `REQUIRETLS`). Empty: opportunistic.
   */
  requiredBy: string[];
  /** RFC 8689: the next hop must offer REQUIRETLS, and MAIL FROM carries it. */
  requireTls: boolean;
  /** The MTA-STS policy that applied (mode enforce or testing), and the MX hosts it ruled out. */
  mtaSts?: { mode: 'enforce' | 'testing'; id: string; mx: string[]; excluded?: string[] };
}

/** Credentials for a route's smarthost (RFC 4954). */
export interface HopAuth {
  user: string;
  password: string;
  /** Send them even without TLS: only when the route says so. */
  allowCleartext: boolean;
}

/** Where mail for a domain goes: the hosts to try, in order, and the key that identifies them. */
export interface Destination {
  /** Sessions are shared per destination within a transaction: equal keys, same hosts, same TLS policy. */
  key: string;
  hops: NextHop[];
  /** Where the hops came from: a configured route, the MX records, or the domain itself (no MX). */
  via: 'route' | 'mx' | 'implicit';
  /** For replies and logs: the domain, or `route delivery.routes[0] (smtp.isp.example:587)`. */
  label: string;
  tls: TlsPolicy;
  auth?: HopAuth;
}

export interface RoutingOptions {
  /** MTA-STS lookups; without it no policy applies. */
  mtaSts?: MtaSts;
  /** The client asked for REQUIRETLS (RFC 8689) on MAIL FROM. */
  requireTls?: boolean;
}

/** Route and `delivery.tls.required` patterns: `*` (every domain), `*.x` (subdomains of x), or a domain. */
function matchesDomain(pattern: string, domain: string): boolean {
  const p = pattern.toLowerCase();
  if (p === '*') return true;
  if (p.startsWith('*.')) return domain.endsWith(p.slice(1));
  return domain === p;
}

function findRoute(routes: RouteConfig[], domain: string): { route: RouteConfig; index: number } | undefined {
  const index = routes.findIndex((route) => route.domains.some((pattern) => matchesDomain(pattern, domain)));
  return index < 0 ? undefined : { route: routes[index], index };
}

function withKey(destination: Omit<Destination, 'key'>, base: string): Destination {
  const { tls } = destination;
  const parts = [base, tls.requiredBy.length ? 'tls=verified' : 'tls=opportunistic'];
  if (tls.mtaSts) parts.push(`mta-sts=${tls.mtaSts.mode}:${tls.mtaSts.id}`);
  if (tls.requireTls) parts.push('requiretls');
  // A changed password (a reload) must not ride on a session that logged in with the old one.
  if (destination.auth) parts.push(`auth=${destination.auth.user}:${createHash('sha256').update(destination.auth.password).digest('base64url').slice(0, 12)}`);
  return { ...destination, key: parts.join('|') };
}

/**
 * A fixed next hop (a route, or the bounce route) as a destination. `requiredBy` lists who
 * else demands verified TLS for the mail going this way.
 */
export function routeDestination(next: { host: string; port: number; tls?: 'opportunistic' | 'required'; auth?: HopAuth }, label = `route ${next.host}:${next.port}`, options: { requiredBy?: string[]; requireTls?: boolean } = {}): Destination {
  const requiredBy = [...(next.tls === 'required' ? [label] : []), ...(options.requiredBy ?? [])];
  return withKey(
    {
      hops: [{ name: next.host, port: next.port }],
      via: 'route',
      label,
      tls: { requiredBy, requireTls: options.requireTls ?? false },
      ...(next.auth ? { auth: next.auth } : {}),
    },
    `route:${next.host}:${next.port}`,
  );
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
 * implicit MX (RFC 5321 §5.1: no MX but an address record means the domain itself), with
 * the TLS it needs: verified when `delivery.tls.required` names the domain, when its MTA-STS
 * policy enforces, or when the client asked for REQUIRETLS; opportunistic otherwise.
 */
export async function resolveDestination(domain: string, config: Config['delivery'], resolve: Resolve, options: RoutingOptions = {}): Promise<Destination | Outcome> {
  const requireTls = options.requireTls ?? false;
  const requiredBy = config.tls.required.some((pattern) => matchesDomain(pattern, domain)) ? ['delivery.tls.required'] : [];
  if (requireTls) requiredBy.push('REQUIRETLS');
  const found = findRoute(config.routes, domain);
  if (found) {
    const { route, index } = found;
    // A route is the admin's own choice of next hop, not an MX: MTA-STS does not apply (RFC 8461 §4 validates MX hosts).
    return routeDestination(route, `route delivery.routes[${index}] (${route.host}:${route.port})`, { requiredBy, requireTls });
  }

  // RFC 8689 §4.2.1: without DNSSEC, REQUIRETLS mail may only go to MX hosts an MTA-STS policy names.
  const useMtaSts = options.mtaSts && (config.mtaSts || requireTls);
  const [mx, sts] = await Promise.all([resolveMx(domain, resolve), useMtaSts ? options.mtaSts!.lookup(domain) : Promise.resolve(undefined)]);
  if ('kind' in mx) return mx;
  const via = mx.length ? 'mx' : 'implicit';
  const exchanges = mx.length ? mx : [domain];
  const policy: StsPolicy | undefined = sts?.policy?.mode === 'enforce' || sts?.policy?.mode === 'testing' ? sts.policy : undefined;

  let hops: NextHop[] = exchanges.map((name) => ({ name, port: config.port }));
  let mtaSts: TlsPolicy['mtaSts'];
  if (requireTls && !policy) {
    if (sts?.temporary) return failure('temporary', 451, '4.4.3', `REQUIRETLS: the MTA-STS policy of ${domain} could not be looked up (${sts.error}); try again later`);
    const why = sts?.error ?? `${domain} publishes no MTA-STS policy`;
    return failure('permanent', 550, '5.7.30', `REQUIRETLS cannot be honoured for ${domain}: ${why}, and without one (or DNSSEC) its MX hosts cannot be validated (RFC 8689 §4.2.1)`);
  }
  if (policy) {
    mtaSts = { mode: policy.mode as 'enforce' | 'testing', id: policy.id, mx: policy.mx };
    const allowed = hops.filter((hop) => mxMatches(policy, hop.name));
    if (policy.mode === 'enforce' || requireTls) {
      // RFC 8461 §4.1, §5: an MX the policy does not list is not used at all.
      if (allowed.length === 0) {
        return failure('temporary', 451, '4.7.5', `no MX host of ${domain} (${exchanges.join(', ')}) is allowed by its MTA-STS policy (id ${policy.id}, mx: ${policy.mx.join(', ')})`);
      }
      if (allowed.length < hops.length) mtaSts.excluded = hops.filter((hop) => !allowed.includes(hop)).map((hop) => hop.name);
      hops = allowed;
      if (policy.mode === 'enforce') requiredBy.push(`MTA-STS enforce (id ${policy.id})`);
    } else {
      for (const hop of hops) if (!allowed.includes(hop)) hop.outsidePolicy = true;
    }
  }
  return withKey(
    { hops, via, label: domain, tls: { requiredBy, requireTls, ...(mtaSts ? { mtaSts } : {}) } },
    // The set of hosts, not their order: equal preferences are shuffled on every lookup, and
    // the key decides which sessions may be shared and reused.
    `mx:${hops
      .map((hop) => hop.name)
      .sort()
      .join(',')}:${config.port}`,
  );
}

/** The MX host names by preference; empty for a domain without MX (implicit MX). */
async function resolveMx(domain: string, resolve: Resolve): Promise<string[] | Outcome> {
  try {
    const records = await resolve(domain, 'MX');
    // RFC 7505: a single MX of "." says the domain accepts no mail.
    if (records.some((record) => record.exchange === '' || record.exchange === '.')) {
      return failure('permanent', 556, '5.1.10', `${domain} accepts no mail (null MX, RFC 7505)`);
    }
    return byPreference(records);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (isTemporaryDnsError(err)) {
      return failure('temporary', 451, '4.4.3', `MX lookup for ${domain} failed (${code}); try again later`);
    }
    if (code === 'ENOTFOUND') {
      return failure('permanent', 550, '5.1.2', `${domain} does not exist (NXDOMAIN)`);
    }
    return [];
  }
}
