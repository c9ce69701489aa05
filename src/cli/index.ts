import { parseArgs } from 'node:util';
import { createInterface } from 'node:readline';
import { checkPublished, DkimKeyError, generateDkimKey, KeyRing } from '../auth/index.ts';
import { ConfigError, loadConfig, type Config } from '../config/index.ts';
import { PlaybookError } from '../delivery/index.ts';
import { uncachedResolver } from '../dns/index.ts';
import { IdentityError } from '../identity/index.ts';
import { hashPassword } from '../inbound/index.ts';
import { createLogger } from '../observability/index.ts';
import { startRelay } from '../relay.ts';

const USAGE = `usage: hygiene-relay <command> [options]

commands:
  start [--config FILE]   run the relay (default config: /etc/hygiene-relay/relay.yaml)
  passwd                  read a password on standard input, print its hash for clients.users
  dkim keygen --domain D --selector S [--type rsa|ed25519] [--bits N] [--out DIR]
                          write a new DKIM key (mode 0600), print its TXT record and YAML
  dkim check [--config FILE]
                          compare every configured key with the TXT record published for it
  demo                    the whole relay path on a simulated internet, on loopback
`;

/** One line on stderr and the exit code: what an admin reads when the relay will not start. */
function fail(message: string, code: number): never {
  process.stderr.write(`hygiene-relay: ${message}\n`);
  process.exit(code);
}

const DEFAULT_CONFIG = '/etc/hygiene-relay/relay.yaml';

function configArg(args: string[]): string {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c', default: DEFAULT_CONFIG } } });
  return values.config;
}

function readConfig(file: string): Config {
  try {
    return loadConfig(file);
  } catch (err) {
    if (err instanceof ConfigError) fail(`config error: ${err.message}`, 2);
    throw err;
  }
}

async function start(args: string[]): Promise<void> {
  const file = configArg(args);
  const config = readConfig(file);
  const logger = createLogger(config.log.level);
  let relay;
  try {
    relay = await startRelay(config, logger);
  } catch (err) {
    logger.fatal({ err }, 'relay did not start');
    logger.flush();
    if (err instanceof DkimKeyError || err instanceof ConfigError || err instanceof PlaybookError) fail(`config error: ${err.message}`, 2);
    if (err instanceof IdentityError) fail(err.message, 1);
    fail((err as Error).message, 1);
  }
  logger.info({ ports: relay.ports, config: file }, 'relay started');
  // SIGHUP: key rotation and config changes without a restart; a broken file changes nothing.
  process.on('SIGHUP', () => {
    try {
      const restartNeeded = relay.reload(loadConfig(file));
      if (restartNeeded.length) logger.warn({ restartNeeded }, 'configuration reloaded; these sections apply only after a restart');
      else logger.info({ config: file }, 'configuration reloaded');
    } catch (err) {
      logger.error({ error: (err as Error).message }, 'reload refused: the running configuration stays in use');
    }
  });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'stopping: no new connections, finishing transactions in flight');
    void relay.close().then(() => {
      logger.info('stopped');
      logger.flush();
      process.exit(0);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

async function passwd(): Promise<void> {
  const lines = createInterface({ input: process.stdin, terminal: false });
  if (process.stdin.isTTY) process.stderr.write('password: ');
  for await (const line of lines) {
    if (!line) fail('empty password', 2);
    process.stdout.write(`${await hashPassword(line)}\n`);
    lines.close();
    return;
  }
  fail('no password on standard input', 2);
}

async function dkim(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub === 'keygen') {
    const { values } = parseArgs({
      args: rest,
      options: { domain: { type: 'string' }, selector: { type: 'string' }, type: { type: 'string', default: 'rsa' }, bits: { type: 'string', default: '2048' }, out: { type: 'string', default: '.' } },
    });
    if (!values.domain || !values.selector) fail('dkim keygen needs --domain and --selector', 2);
    if (values.type !== 'rsa' && values.type !== 'ed25519') fail(`--type must be rsa or ed25519, not "${values.type}"`, 2);
    const bits = Number(values.bits);
    if (values.type === 'rsa' && (!Number.isInteger(bits) || bits < 1024 || bits > 4096)) fail(`--bits must be 1024 to 4096 (2048 recommended), not "${values.bits}"`, 2);
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
    const config = readConfig(configArg(rest));
    let keys;
    try {
      keys = KeyRing.load(config.domains);
    } catch (err) {
      if (err instanceof DkimKeyError) fail(`config error: ${err.message}`, 2);
      throw err;
    }
    const resolve = uncachedResolver(config.dns);
    const results = await Promise.all(keys.keys.map((key) => checkPublished(key, resolve)));
    for (const result of results) {
      const { key } = result;
      const kind = `${key.algorithm}${key.bits ? ` ${key.bits} bits` : ''}, ${key.standby ? 'standby' : 'active'}`;
      process.stdout.write(`${result.state === 'matches' ? 'OK  ' : 'FAIL'} ${key.domain} selector ${key.selector} (${kind}): ${result.detail}\n`);
    }
    for (const warning of keys.warnings) process.stdout.write(`WARN ${warning}\n`);
    if (results.length === 0) process.stdout.write('no DKIM keys configured\n');
    process.exitCode = results.every((r) => r.state === 'matches') ? 0 : 1;
    return;
  }
  fail(`unknown dkim command "${sub ?? ''}": use keygen or check`, 2);
}

export async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'start':
      return start(rest);
    case 'passwd':
      return passwd();
    case 'dkim':
      return dkim(rest);
    case 'demo': {
      const { runDemo } = await import('../../demo/demo.ts');
      process.exitCode = await runDemo();
      return;
    }
    case undefined:
    case '-h':
    case '--help':
      process.stdout.write(USAGE);
      return;
    default:
      fail(`unknown command "${command}"\n${USAGE}`, 2);
  }
}
