import { checkPublished, generateDkimKey, keyKind } from '../auth/index.ts';
import { uncachedResolver } from '../dns/index.ts';
import { CONFIG_HELP, configArg, fail, HELP_HELP, parseOptions, readConfig, readKeys, subcommand, usageError, type Command } from './common.ts';

const KEYGEN: Command = {
  name: 'dkim keygen',
  usage: `usage: hygiene-relay dkim keygen --domain D --selector S [--type rsa|ed25519] [--bits N] [--out DIR]

Writes a new DKIM private key (mode 0600) to DIR/D.S.pem and prints the TXT record
to publish and the YAML to add to the configuration.

options:
  --domain D          the signing domain (d=)
  --selector S        the selector (s=): the TXT record goes at S._domainkey.D
  --type rsa|ed25519  the key type (default: rsa; Gmail needs RSA, so sign with both)
  --bits N            RSA modulus length, 1024 to 4096 (default: 2048)
  --out DIR           where the key is written (default: the current directory)
${HELP_HELP}
`,
};

const CHECK: Command = {
  name: 'dkim check',
  usage: `usage: hygiene-relay dkim check [--config FILE]

Compares every configured DKIM key, standby ones too, with the TXT record DNS publishes
for it (asked fresh, through the configured DNS servers). Exit 0: all match; 1: not.

options:
${CONFIG_HELP}
${HELP_HELP}
`,
};

const DKIM: Command = {
  name: 'dkim',
  usage: `usage: hygiene-relay dkim <command> [options]

commands:
  keygen    write a new key, print its TXT record and YAML
  check     compare every configured key with the TXT record published for it

hygiene-relay dkim <command> --help describes each.
`,
};

/** `dkim keygen` and `dkim check`. */
export async function dkim(args: string[]): Promise<void> {
  const [sub, rest] = subcommand(args, DKIM, ['keygen', 'check']);
  if (sub === 'keygen') {
    const { values } = parseOptions(rest, KEYGEN, {
      domain: { type: 'string' },
      selector: { type: 'string' },
      type: { type: 'string', default: 'rsa' },
      bits: { type: 'string', default: '2048' },
      out: { type: 'string', default: '.' },
    });
    if (!values.domain || !values.selector) usageError(KEYGEN, 'dkim keygen needs --domain and --selector');
    if (values.type !== 'rsa' && values.type !== 'ed25519') usageError(KEYGEN, `--type must be rsa or ed25519, not "${values.type}"`);
    const bits = Number(values.bits);
    if (values.type === 'rsa' && (!Number.isInteger(bits) || bits < 1024 || bits > 4096)) usageError(KEYGEN, `--bits must be 1024 to 4096 (2048 recommended), not "${values.bits}"`);
    let generated;
    try {
      generated = generateDkimKey({ domain: values.domain.toLowerCase(), selector: values.selector, type: values.type, bits, out: values.out });
    } catch (err) {
      fail(`cannot write the key: ${(err as Error).message}`, 1);
    }
    process.stdout.write(`# private key written to ${generated.file} (mode 0600)\n`);
    process.stdout.write(`# publish this TXT record:\n${generated.txtRecord}\n`);
    process.stdout.write(`# add this to the relay's configuration:\n${generated.yaml}`);
    return;
  }
  if (sub === 'check') {
    const config = readConfig(configArg(rest, CHECK));
    const keys = readKeys(config);
    const resolve = uncachedResolver(config.dns);
    const results = await Promise.all(keys.keys.map((key) => checkPublished(key, resolve)));
    for (const result of results) {
      const { key } = result;
      process.stdout.write(`${result.state === 'matches' ? 'OK  ' : 'FAIL'} ${key.domain} selector ${key.selector} (${keyKind(key)}): ${result.detail}\n`);
    }
    for (const warning of keys.warnings) process.stdout.write(`WARN ${warning}\n`);
    if (results.length === 0) process.stdout.write('no DKIM keys configured\n');
    process.exitCode = results.every((r) => r.state === 'matches') ? 0 : 1;
  }
}
