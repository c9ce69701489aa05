import { uncachedResolver } from '../dns/index.ts';
import { exitCode, renderReport, runDoctor } from '../doctor/index.ts';
import { CONFIG_HELP, CONFIG_OPTION, HELP_HELP, parseOptions, readConfig, readKeys, usageError, type Command } from './common.ts';

const DOCTOR: Command = {
  name: 'doctor',
  usage: `usage: hygiene-relay doctor [--config FILE] [--json] [--domain D]

Checks the DNS of the deployment as receivers will see it, asked fresh through the
configured DNS servers: for each egress address its PTR, that the PTR resolves back,
the HELO, DNS blocklists (doctor.blocklists); for each sending domain its SPF record,
DKIM keys (active and standby), DMARC, MTA-STS and TLS-RPT. One line per check (OK,
WARN, FAIL, INFO), and under each warning or failure the record to publish.

exit status: 0 all pass, 1 warnings only, 2 any failure (or a configuration error)

options:
${CONFIG_HELP}
  --domain D          check this sending domain only (configured or not)
  --json              the report as JSON (its shape: docs/doctor.md)
${HELP_HELP}
`,
};

const DOMAIN = /^(?=.{1,253}\.?$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+\.?$/i;

/** `doctor`. */
export async function doctor(args: string[]): Promise<void> {
  const { values } = parseOptions(args, DOCTOR, { ...CONFIG_OPTION, json: { type: 'boolean', default: false }, domain: { type: 'string' } });
  if (values.domain !== undefined && !DOMAIN.test(values.domain)) usageError(DOCTOR, `--domain must be a domain name, not "${values.domain}"`);
  const config = readConfig(values.config);
  const report = await runDoctor(config, uncachedResolver(config.dns), readKeys(config), { domain: values.domain });
  process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : renderReport(report));
  process.exitCode = exitCode(report);
}
