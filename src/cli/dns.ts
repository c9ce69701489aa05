import { controlRequest } from '../control/index.ts';
import { CONFIG_HELP, configArg, fail, HELP_HELP, readConfig, subcommand, type Command } from './common.ts';

const FLUSH: Command = {
  name: 'dns flush',
  usage: `usage: hygiene-relay dns flush [--config FILE]

Makes the running relay drop every cached DNS answer (in-process, and in Redis when
dns.cache.redis is set) without a reload, through its control socket (control.socket in
the configuration). SIGHUP flushes too, with a reload. Exit 0: flushed; 1: no relay answered.

options:
${CONFIG_HELP}
${HELP_HELP}
`,
};

const DNS: Command = {
  name: 'dns',
  usage: `usage: hygiene-relay dns <command> [options]

commands:
  flush     make the running relay drop its cached DNS answers
`,
};

/** `dns flush`: the running relay (found through control.socket in its config) drops every cached DNS answer. */
export async function dns(args: string[]): Promise<void> {
  const [, rest] = subcommand(args, DNS, ['flush']);
  const socket = readConfig(configArg(rest, FLUSH)).control.socket;
  if (!socket) fail('control.socket is null in the configuration: nothing to reach the relay through (SIGHUP also flushes, with a reload)', 2);
  let answer: string;
  try {
    answer = await controlRequest(socket, 'dns flush');
  } catch (err) {
    const { code, message } = err as NodeJS.ErrnoException;
    fail(`cannot reach the relay at ${socket}: ${code ?? message} (is it running, with this configuration?)`, 1);
  }
  if (!answer.startsWith('ok ')) fail(`the relay answered: ${answer}`, 1);
  process.stdout.write(`${answer.slice(3)}\n`);
}
