import net from 'node:net';
import { DkimKeyError, keyKind, KeyRing } from '../auth/index.ts';
import { ConfigError, readTlsFiles, type Config } from '../config/index.ts';
import { Playbook, PlaybookError, Providers } from '../delivery/index.ts';
import { uncachedResolver } from '../dns/index.ts';
import { verifyEgress, type Egress } from '../identity/index.ts';
import { CONFIG_HELP, configArg, HELP_HELP, readConfig, subcommand, type Command } from './common.ts';

const CHECK: Command = {
  name: 'config check',
  usage: `usage: hygiene-relay config check [--config FILE]

Checks what start (and a SIGHUP reload) would use, without binding any port: the
file itself, the DKIM keys, the provider registry and playbook, the TLS certificate
and key, and whether each egress identity verifies (PTR and A/AAAA, asked fresh
through the configured DNS servers). One line per finding: OK, WARN or FAIL.

exit status: 0 all good, 1 warnings only, 2 errors (start would refuse the file)

options:
${CONFIG_HELP}
${HELP_HELP}
`,
};

const CONFIG: Command = {
  name: 'config',
  usage: `usage: hygiene-relay config <command> [options]

commands:
  check     check a configuration before a start or a reload (SIGHUP)

hygiene-relay config check --help describes it.
`,
};

type Severity = 'OK  ' | 'WARN' | 'FAIL';

/** The findings, printed as they come: a slow DNS answer does not hold back the lines before it. */
class Findings {
  warnings = 0;
  errors = 0;

  add(severity: Severity, line: string): void {
    if (severity === 'WARN') this.warnings++;
    if (severity === 'FAIL') this.errors++;
    process.stdout.write(`${severity} ${line}\n`);
  }
}

function count(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** `config check`. */
export async function config(args: string[]): Promise<void> {
  const [, rest] = subcommand(args, CONFIG, ['check']);
  const file = configArg(rest, CHECK);
  // A file that does not parse leaves nothing else to check: the same one line as start.
  const settings = readConfig(file);
  const findings = new Findings();
  findings.add('OK  ', `${file}: valid (${count(settings.listeners.length, 'listener')}, ${count(settings.egress.length, 'egress identity', 'egress identities')}, ${count(Object.keys(settings.domains).length, 'domain')})`);
  checkKeys(settings, findings);
  checkDelivery(settings, findings);
  checkTls(settings, findings);
  await checkEgress(settings, findings);
  findings.add(findings.errors ? 'FAIL' : findings.warnings ? 'WARN' : 'OK  ', `${file}: ${count(findings.errors, 'error')}, ${count(findings.warnings, 'warning')}`);
  process.exitCode = findings.errors ? 2 : findings.warnings ? 1 : 0;
}

function checkKeys(settings: Config, findings: Findings): void {
  let keys: KeyRing;
  try {
    keys = KeyRing.load(settings.domains);
  } catch (err) {
    if (!(err instanceof DkimKeyError)) throw err;
    findings.add('FAIL', `DKIM ${err.message}`);
    return;
  }
  for (const key of keys.keys) {
    findings.add('OK  ', `DKIM ${key.domain} selector ${key.selector} (${keyKind(key)}) loaded from ${key.source}`);
  }
  for (const warning of keys.warnings) findings.add('WARN', `DKIM ${warning}`);
}

function checkDelivery(settings: Config, findings: Findings): void {
  try {
    const playbook = Playbook.load(Providers.load(settings.delivery.providers), settings.delivery.playbook);
    findings.add('OK  ', `playbook: ${count(playbook.rules.length, 'row')}${settings.delivery.playbook ? ` (with ${settings.delivery.playbook})` : ''}`);
  } catch (err) {
    if (!(err instanceof ConfigError || err instanceof PlaybookError)) throw err;
    findings.add('FAIL', `playbook: ${err.message}`);
  }
}

function checkTls(settings: Config, findings: Findings): void {
  if (!settings.tls) return;
  try {
    const { certificate, warnings } = readTlsFiles(settings.tls);
    const names = certificate.subjectAltName ?? certificate.subject.replace(/\n/g, ', ');
    findings.add('OK  ', `TLS certificate ${settings.tls.cert} (${names}; valid until ${certificate.validToDate.toISOString().slice(0, 10)}) and its key ${settings.tls.key}`);
    for (const warning of warnings) findings.add('WARN', `TLS ${warning}`);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    findings.add('FAIL', `TLS ${err.message}`);
  }
}

/** As EgressPool would take them at start: strict refuses to start, an IPv6 one is used only verified. */
async function checkEgress(settings: Config, findings: Findings): Promise<void> {
  const resolve = uncachedResolver(settings.dns);
  const identities = await Promise.all(settings.egress.map((egress) => verifyEgress(egress, resolve)));
  for (const egress of identities) {
    if (egress.verified) {
      findings.add('OK  ', `egress ${egress.ip}: verified, HELO ${egress.helo}`);
    } else if (settings.strict) {
      findings.add('FAIL', `egress ${egress.ip}: ${egress.problem} (strict: the relay does not start)`);
    } else {
      findings.add('WARN', `egress ${egress.ip}: ${egress.problem} (${consequence(egress)})`);
    }
  }
}

function consequence(egress: Egress): string {
  if (egress.inconclusive) return 'nothing known until DNS answers';
  if (net.isIPv6(egress.ip)) return 'not used until it verifies';
  return `used with HELO ${egress.helo}, but receivers distrust mail from it`;
}
