import { parseArgs, type ParseArgsOptionsConfig } from 'node:util';
import { DkimKeyError, KeyRing } from '../auth/index.ts';
import { ConfigError, loadConfig, type Config } from '../config/index.ts';
import { controlRequest } from '../control/index.ts';

/** One line on stderr and the exit code: what an admin reads when a command cannot go on. */
export function fail(message: string, code: number): never {
  process.stderr.write(`hygiene-relay: ${message}\n`);
  process.exit(code);
}

/** A command as `--help` shows it and as its one-line errors name it. */
export interface Command {
  /** As typed after `hygiene-relay`: `start`, `dkim keygen`; empty for hygiene-relay itself. */
  name: string;
  /** What `--help` prints on standard output. */
  usage: string;
}

/** A command used wrongly: one line pointing to its --help, exit 2 (the usage itself would bury the line). */
export function usageError(command: Command, message: string): never {
  fail(`${message}; see hygiene-relay ${command.name ? `${command.name} ` : ''}--help`, 2);
}

const HELP = { help: { type: 'boolean', short: 'h' } } as const;

type Parsed<O extends ParseArgsOptionsConfig, P extends boolean> = ReturnType<typeof parseArgs<{ args: string[]; options: O & typeof HELP; strict: true; allowPositionals: P }>>;

/**
 * node:util parseArgs in strict mode for every command, with `-h`/`--help` added: the usage
 * on stdout and exit 0. A mistyped or incomplete option is one line and exit 2, never the
 * stack trace parseArgs throws. `positionals`: the command takes arguments that are not
 * options (a file name).
 */
export function parseOptions<const O extends ParseArgsOptionsConfig, const P extends boolean = false>(args: string[], command: Command, options: O, positionals?: P): Parsed<O, P> {
  const all = { ...options, ...HELP };
  let parsed: Parsed<O, P>;
  try {
    parsed = parseArgs({ args, options: all, strict: true, allowPositionals: positionals ?? false }) as Parsed<O, P>;
  } catch (err) {
    if (!String((err as NodeJS.ErrnoException).code).startsWith('ERR_PARSE_ARGS_')) throw err;
    usageError(command, misuse(args, all, positionals ?? false, command.name ? ` for ${command.name}` : '') ?? (err as Error).message.split('\n')[0]);
  }
  if ((parsed.values as { help?: boolean }).help) {
    process.stdout.write(command.usage);
    process.exit(0);
  }
  return parsed;
}

/** The first argument strict parsing refused, in the admin's words; parseArgs' own messages explain its API. */
function misuse(args: string[], options: ParseArgsOptionsConfig, positionals: boolean, forCommand: string): string | undefined {
  const { tokens } = parseArgs({ args, options, strict: false, allowPositionals: true, tokens: true });
  for (const token of tokens) {
    if (token.kind === 'positional' && !positionals) return `unexpected argument "${token.value}"${forCommand}`;
    if (token.kind !== 'option') continue;
    const option = options[token.name];
    if (!option) return `unknown option ${token.rawName}${forCommand}`;
    // Without a value, or the next option taken for it (`--config --help`).
    if (option.type === 'string' && (token.value === undefined || (!token.inlineValue && token.value.startsWith('-')))) return `missing value of option ${token.rawName}${forCommand}`;
    if (option.type === 'boolean' && token.value !== undefined) return `option ${token.rawName}${forCommand} takes no value`;
  }
  return undefined;
}

/**
 * For commands made of subcommands (`dkim keygen`): the subcommand and its arguments.
 * `--help` (or nothing) prints the command's usage; anything else is one line, exit 2.
 */
export function subcommand<const S extends string>(args: string[], command: Command, subcommands: readonly S[]): [S, string[]] {
  const [sub, ...rest] = args;
  if (sub === '-h' || sub === '--help') {
    process.stdout.write(command.usage);
    process.exit(0);
  }
  if (sub === undefined) usageError(command, `${command.name} needs a command: ${subcommands.join(' or ')}`);
  if (sub.startsWith('-')) usageError(command, `unknown option ${sub} for ${command.name}`);
  if (!subcommands.includes(sub as S)) usageError(command, `unknown ${command.name} command "${sub}": use ${subcommands.join(' or ')}`);
  return [sub as S, rest];
}

export const DEFAULT_CONFIG = '/etc/hygiene-relay/relay.yaml';

/** `-c, --config FILE`, the option of every command that reads the relay's configuration. */
export const CONFIG_OPTION = { config: { type: 'string', short: 'c', default: DEFAULT_CONFIG } } as const;
export const CONFIG_HELP = `  -c, --config FILE   the relay's configuration (default: ${DEFAULT_CONFIG})`;
export const HELP_HELP = '  -h, --help          this text';

/** The `--config` of a command that takes no other option. */
export function configArg(args: string[], command: Command): string {
  return parseOptions(args, command, CONFIG_OPTION).values.config;
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

/** The configured DKIM keys, loaded and checked, or one line naming the key and exit 2. */
export function readKeys(config: Config): KeyRing {
  try {
    return KeyRing.load(config.domains);
  } catch (err) {
    if (err instanceof DkimKeyError) fail(`config error: ${err.message}`, 2);
    throw err;
  }
}

/**
 * Sends one command to the running relay through control.socket and resolves to its answer
 * after `ok`; no socket, no relay, or an `error` answer is one line and an exit code.
 * `otherwise`: how to reach the relay without the socket, if there is a way.
 */
export async function askRelay(config: Config, line: string, otherwise?: string): Promise<string> {
  const socket = config.control.socket;
  if (!socket) fail(`control.socket is null in the configuration: nothing to reach the relay through${otherwise ? ` (${otherwise})` : ''}`, 2);
  let answer: string;
  try {
    answer = await controlRequest(socket, line);
  } catch (err) {
    const { code, message } = err as NodeJS.ErrnoException;
    fail(`cannot reach the relay at ${socket}: ${code ?? message} (is it running, with this configuration?)`, 1);
  }
  if (!answer.startsWith('ok ')) fail(`the relay answered: ${answer.replace(/^error /, '')}`, 1);
  return answer.slice(3);
}
