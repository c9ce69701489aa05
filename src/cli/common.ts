import { parseArgs } from 'node:util';
import { ConfigError, loadConfig, type Config } from '../config/index.ts';

/** One line on stderr and the exit code: what an admin reads when a command cannot go on. */
export function fail(message: string, code: number): never {
  process.stderr.write(`hygiene-relay: ${message}\n`);
  process.exit(code);
}

export const DEFAULT_CONFIG = '/etc/hygiene-relay/relay.yaml';

export function configArg(args: string[]): string {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c', default: DEFAULT_CONFIG } } });
  return values.config;
}

/** The validated config, or one line naming the key path and exit 2. */
export function readConfig(file: string): Config {
  try {
    return loadConfig(file);
  } catch (err) {
    if (err instanceof ConfigError) fail(`config error: ${err.message}`, 2);
    throw err;
  }
}
