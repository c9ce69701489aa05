import type { Hold } from '../abuse/index.ts';
import { askRelay, CONFIG_HELP, CONFIG_OPTION, fail, HELP_HELP, parseOptions, readConfig, subcommand, usageError, type Command } from './common.ts';

const LIST: Command = {
  name: 'abuse list',
  usage: `usage: hygiene-relay abuse list [--config FILE] [--json]

The senders the running relay holds (abuse.hold: over a sending limit, anomalous, or refused
as spam by two providers), oldest first: what is held (a user or an envelope sender), since
when and why. Asked through control.socket; with limits.redis the holds are every replica's.
Exit 0, also when nothing is held; 1: no relay answered.

options:
${CONFIG_HELP}
      --json          the holds as a JSON array
${HELP_HELP}
`,
};

const RELEASE: Command = {
  name: 'abuse release',
  usage: `usage: hygiene-relay abuse release SENDER [--config FILE]

Lets a held sender send again: SENDER is the AUTH user name or the envelope sender address
that \`abuse list\` shows; every hold on that name is released, on every replica when
limits.redis is set, and its sending counts start afresh. Release only after the cause is
dealt with (the password changed, the host cleaned): the mail its server still queues leaves
at once. Exit 0: released; 1: it was not held, or no relay answered.

options:
${CONFIG_HELP}
${HELP_HELP}
`,
};

const ABUSE: Command = {
  name: 'abuse',
  usage: `usage: hygiene-relay abuse <command> [options]

commands:
  list              the senders the relay holds
  release SENDER    let a held sender send again
`,
};

const since = (ms: number) => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');

function holdsOf(answer: string): Hold[] {
  try {
    return JSON.parse(answer) as Hold[];
  } catch {
    fail(`the relay answered what is no list of holds: ${answer.slice(0, 200)}`, 1);
  }
}

/** `abuse list | release SENDER`: the running relay's holds, through its control socket. */
export async function abuse(args: string[]): Promise<void> {
  const [command, rest] = subcommand(args, ABUSE, ['list', 'release']);
  if (command === 'list') {
    const { values } = parseOptions(rest, LIST, { ...CONFIG_OPTION, json: { type: 'boolean' } });
    const holds = holdsOf(await askRelay(readConfig(values.config), 'abuse list'));
    if (values.json) process.stdout.write(`${JSON.stringify(holds, null, 2)}\n`);
    else if (!holds.length) process.stdout.write('no sender is held\n');
    else for (const hold of holds) process.stdout.write(`${hold.kind} ${hold.who}\theld since ${since(hold.since)}: ${hold.why}\n`);
    return;
  }
  const { values, positionals } = parseOptions(rest, RELEASE, CONFIG_OPTION, true);
  if (positionals.length !== 1) usageError(RELEASE, positionals.length ? `abuse release takes one sender, not ${positionals.length}` : 'abuse release needs the sender to release (a user name or an address)');
  const [who] = positionals;
  if (/\s/.test(who)) usageError(RELEASE, `"${who}" is no user name or address (it has white space)`);
  const released = holdsOf(await askRelay(readConfig(values.config), `abuse release ${who}`));
  if (!released.length) fail(`${who} is not held (hygiene-relay abuse list shows who is)`, 1);
  for (const hold of released) process.stdout.write(`released ${hold.kind} ${hold.who} (held since ${since(hold.since)}: ${hold.why})\n`);
}
