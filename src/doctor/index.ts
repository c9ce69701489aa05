// `hygiene-relay doctor` (DESIGN §6): the deployment's DNS from outside in, as receivers see it.
// The same checks run at start-up and on SIGHUP (runDoctor, then logReport).
import type { KeyRing } from '../auth/index.ts';
import type { Config } from '../config/index.ts';
import type { Resolve } from '../dns/index.ts';
import { verifyEgress } from '../identity/index.ts';
import { dkimChecks, dmarcChecks, transportChecks } from './domain.ts';
import { egressChecks, loadBlocklists } from './egress.ts';
import { assemble, type DoctorReport } from './report.ts';
import { spfChecks } from './spf.ts';

export { doctorReportSchema, exitCode, logReport, renderReport, type CheckId, type CheckStatus, type DoctorCheck, type DoctorReport } from './report.ts';

export interface DoctorOptions {
  /** Check this sending domain only (configured or not) instead of every configured one. */
  domain?: string;
}

/**
 * Every check, for each egress identity and each sending domain. `resolve` must ask DNS
 * afresh (`uncachedResolver`, or a Resolver's `fresh`): a record just fixed is seen at once.
 * Never throws for what DNS answers: a lookup that fails is a warning of its check.
 */
export async function runDoctor(config: Config, resolve: Resolve, keys: KeyRing, options: DoctorOptions = {}): Promise<DoctorReport> {
  const checkedAt = new Date();
  const domains = options.domain ? [options.domain.toLowerCase().replace(/\.$/, '')] : Object.keys(config.domains);
  const lists = loadBlocklists();
  // The host name to suggest for a PTR when there is none to go by.
  const host = `mail.${domains[0] ?? 'example.com'}`;
  const [egress, identities] = await Promise.all([
    Promise.all(config.egress.map((e) => egressChecks(e, host, config.doctor.blocklists, lists, resolve))),
    // The HELO each egress will really use, for the SPF evaluations (RFC 7208 §2.3 passes it on).
    Promise.all(config.egress.map((e) => verifyEgress(e, resolve))),
  ]);
  const perDomain = await Promise.all(
    domains.map(async (domain) => {
      const [spf, dkim, transport] = await Promise.all([spfChecks(domain, identities, resolve), dkimChecks(domain, keys, resolve), transportChecks(domain, checkedAt, resolve)]);
      const subdomains = config.domains[domain]?.subdomains ?? false;
      const dmarc = await dmarcChecks(domain, { spfPasses: spf.passes, dkimDomain: dkim.signs, subdomains }, resolve);
      return [...spf.checks, ...dkim.checks, ...dmarc, ...transport];
    }),
  );
  return assemble(
    config.egress.map((e) => e.ip),
    domains,
    [...egress.flat(), ...perDomain.flat()],
    checkedAt,
  );
}
