import net from 'node:net';
import type { Config, EgressConfig } from '../config/index.ts';
import { isTemporaryDnsError, type Resolve } from '../dns/index.ts';
import { canonicalAddress, reverseName } from '../ip/index.ts';
import { Gauge, METRIC_PREFIX, type Logger } from '../observability/index.ts';

/** What the relay knows of one egress address: what receivers will see and whether it holds up. */
export interface Egress {
  /** Public address (what the receiver sees, what SPF must authorize). */
  ip: string;
  /** Address the relay binds for outbound connections. */
  bind: string;
  /** Name sent in EHLO. */
  helo: string;
  /** The PTR of `ip` names `helo` and `helo` resolves back to `ip` (FCrDNS). */
  verified: boolean;
  /** Why it does not verify, in words an admin can act on. */
  problem?: string;
  /** The lookups failed for now (SERVFAIL, timeout): nothing is known either way. */
  inconclusive?: boolean;
}

async function lookupAddresses(name: string, resolve: Resolve): Promise<{ addresses: string[]; temporary: boolean }> {
  const settled = await Promise.allSettled([resolve(name, 'A'), resolve(name, 'AAAA')]);
  return {
    addresses: settled.flatMap((result) => (result.status === 'fulfilled' ? result.value : [])),
    temporary: settled.some((result) => result.status === 'rejected' && isTemporaryDnsError(result.reason)),
  };
}

/** One address in any notation: `::ffff:192.0.2.1` is 192.0.2.1, `2001:DB8::1` is 2001:db8::1. */
function sameAddress(a: string, b: string): boolean {
  const address = canonicalAddress(a);
  return address !== undefined && address === canonicalAddress(b);
}

const HOST_NAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$/;

/**
 * Gmail, Microsoft and Yahoo all want the connecting IP's PTR to name a host whose A/AAAA
 * gives the same IP back (forward-confirmed reverse DNS), and the HELO to be that name.
 */
export async function verifyEgress(config: EgressConfig, resolve: Resolve): Promise<Egress> {
  const base = { ip: config.ip, bind: config.bind ?? config.ip };
  // RFC 5321 §4.1.3: an address literal is the HELO of last resort when no name holds up.
  const literal = net.isIPv6(config.ip) ? `[IPv6:${config.ip}]` : `[${config.ip}]`;
  let ptrNames: string[];
  try {
    ptrNames = (await resolve(reverseName(config.ip), 'PTR')).map((name) => name.toLowerCase().replace(/\.$/, ''));
  } catch (err) {
    const helo = config.helo === 'auto' ? literal : config.helo;
    const code = (err as NodeJS.ErrnoException).code ?? 'lookup failed';
    if (isTemporaryDnsError(err)) return { ...base, helo, verified: false, inconclusive: true, problem: `PTR lookup for ${config.ip} failed (${code})` };
    return { ...base, helo, verified: false, problem: `no PTR record for ${config.ip} (${code}): publish one naming the relay's HELO host` };
  }
  // RFC 5321 §4.1.1.1 / §2.3.5: the EHLO name is a domain of letters, digits and hyphens; a
  // PTR that names anything else (an underscore, a space) cannot be the HELO.
  const hostNames = ptrNames.filter((name) => HOST_NAME.test(name));
  if (config.helo === 'auto' && hostNames.length === 0) {
    return { ...base, helo: literal, verified: false, problem: `PTR of ${config.ip} is ${ptrNames.map((name) => JSON.stringify(name)).join(', ')}, not a host name usable as HELO: publish a PTR naming the relay's host` };
  }
  const candidates = config.helo === 'auto' ? hostNames : ptrNames.filter((name) => name === config.helo.toLowerCase());
  if (candidates.length === 0) {
    return { ...base, helo: config.helo, verified: false, problem: `PTR of ${config.ip} is ${ptrNames.join(', ')}, not the configured HELO ${config.helo}` };
  }
  let temporary = false;
  for (const name of candidates) {
    const found = await lookupAddresses(name, resolve);
    if (found.addresses.some((address) => sameAddress(address, config.ip))) return { ...base, helo: name, verified: true };
    temporary ||= found.temporary;
  }
  const helo = config.helo === 'auto' ? candidates[0] : config.helo;
  if (temporary) return { ...base, helo, verified: false, inconclusive: true, problem: `address lookup for ${candidates.join(', ')} failed` };
  return { ...base, helo, verified: false, problem: `PTR of ${config.ip} is ${candidates.join(', ')}, but that name does not resolve back to ${config.ip}: add an A/AAAA record ${candidates[0]} → ${config.ip}` };
}

export class IdentityError extends Error {
  override name = 'IdentityError';
}

const identities = new Gauge({
  name: `${METRIC_PREFIX}egress_identities`,
  help: 'Configured egress identities by status at the last check: verified (PTR forward-confirms, HELO matches) or unverified',
  labelNames: ['status'],
  // Every worker checks the same identities: the count is one worker's, not their sum.
  aggregator: 'max',
});
const usable = new Gauge({
  name: `${METRIC_PREFIX}egress_usable`,
  help: 'Whether a new transaction finds an egress identity it may use (0: MAIL FROM is answered 451 4.3.5)',
  // 0 when any worker would answer 451 4.3.5.
  aggregator: 'min',
});

/**
 * The egress identities in use. Each is verified at start and again every `identityRecheck`;
 * in strict mode one that stops verifying is taken out of use until it verifies again.
 */
export class EgressPool {
  #config: Config;
  #resolve: Resolve;
  #logger: Logger;
  #current: Egress[] = [];
  #timer?: NodeJS.Timeout;

  constructor(config: Config, resolve: Resolve, logger: Logger) {
    this.#config = config;
    this.#resolve = resolve;
    this.#logger = logger.child({ component: 'identity' });
  }

  get identities(): readonly Egress[] {
    return this.#current;
  }

  async start(): Promise<void> {
    await this.check(true);
    if (this.#config.strict && this.#current.some((egress) => !egress.verified)) {
      const failing = this.#current.filter((egress) => !egress.verified);
      throw new IdentityError(`strict: egress identity does not verify: ${failing.map((e) => `${e.ip}: ${e.problem}`).join('; ')}`);
    }
    this.#timer = setInterval(() => void this.check(false), this.#config.identityRecheck);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** Re-verifies every identity; logs each at start, and afterwards only what changed. */
  async check(initial: boolean): Promise<void> {
    const checked = await Promise.all(this.#config.egress.map((egress) => verifyEgress(egress, this.#resolve)));
    // A DNS hiccup proves nothing: keep what was known and look again at the next check.
    const next = checked.map((egress, index) => {
      const before = this.#current[index];
      if (!egress.inconclusive || !before) return egress;
      this.#logger.warn({ egressIp: egress.ip, problem: egress.problem }, 'egress identity re-check inconclusive; keeping the last result');
      return before;
    });
    next.forEach((egress, index) => {
      const before = this.#current[index];
      const fields = { egressIp: egress.ip, bind: egress.bind, helo: egress.helo, verified: egress.verified, problem: egress.problem };
      if (initial) {
        if (egress.verified) this.#logger.info(fields, 'egress identity verified');
        else this.#logger.warn(fields, 'egress identity does not verify: receivers will distrust mail sent from it');
      } else if (before?.verified && !egress.verified) {
        this.#logger.error(fields, this.#config.strict ? 'egress identity stopped verifying: taken out of use' : 'egress identity stopped verifying');
      } else if (before && !before.verified && egress.verified) {
        this.#logger.info(fields, 'egress identity verifies again');
      }
    });
    this.#current = next;
    const verified = next.filter((egress) => egress.verified).length;
    identities.set({ status: 'verified' }, verified);
    identities.set({ status: 'unverified' }, next.length - verified);
    usable.set(this.select() ? 1 : 0);
  }

  /**
   * The egress for a new transaction, or undefined when none is usable. An IPv6 identity is
   * used only when it verifies, in any mode: Gmail refuses IPv6 senders whose PTR does not
   * resolve back. IPv4 comes first, because an IPv6 egress reaches only destinations with
   * AAAA records (connectDestination asks for the egress's own family).
   */
  select(): Egress | undefined {
    const usable = this.#current.filter((egress) => egress.verified || (!this.#config.strict && !net.isIPv6(egress.ip)));
    return usable.find((egress) => !net.isIPv6(egress.ip)) ?? usable[0];
  }
}
