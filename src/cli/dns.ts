import { askRelay, CONFIG_HELP, configArg, HELP_HELP, readConfig, subcommand, type Command } from './common.ts';

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
  const answer = await askRelay(readConfig(configArg(rest, FLUSH)), 'dns flush', 'SIGHUP also flushes, with a reload');
  process.stdout.write(`${answer}\n`);
}
