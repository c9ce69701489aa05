import { parseArgs } from 'node:util';
import { createInterface } from 'node:readline';
import { ConfigError, loadConfig } from '../config/index.ts';
import { IdentityError } from '../identity/index.ts';
import { hashPassword } from '../inbound/index.ts';
import { createLogger } from '../observability/index.ts';
import { startRelay } from '../relay.ts';

const USAGE = `usage: hygiene-relay <command> [options]

commands:
  start [--config FILE]   run the relay (default config: /etc/hygiene-relay/relay.yaml)
  passwd                  read a password on standard input, print its hash for clients.users
  demo                    the whole relay path on a simulated internet, on loopback
`;

/** One line on stderr and the exit code: what an admin reads when the relay will not start. */
function fail(message: string, code: number): never {
  process.stderr.write(`hygiene-relay: ${message}\n`);
  process.exit(code);
}

async function start(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c', default: '/etc/hygiene-relay/relay.yaml' } } });
  let config;
  try {
    config = loadConfig(values.config);
  } catch (err) {
    if (err instanceof ConfigError) fail(`config error: ${err.message}`, 2);
    throw err;
  }
  const logger = createLogger(config.log.level);
  let relay;
  try {
    relay = await startRelay(config, logger);
  } catch (err) {
    logger.fatal({ err }, 'relay did not start');
    logger.flush();
    if (err instanceof IdentityError) fail(err.message, 1);
    fail((err as Error).message, 1);
  }
  logger.info({ ports: relay.ports, config: values.config }, 'relay started');
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

export async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'start':
      return start(rest);
    case 'passwd':
      return passwd();
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
