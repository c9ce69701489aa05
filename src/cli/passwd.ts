import { createInterface } from 'node:readline';
import { Writable } from 'node:stream';
import { hashPassword } from '../inbound/index.ts';
import { fail, HELP_HELP, parseOptions, type Command } from './common.ts';

const PASSWD: Command = {
  name: 'passwd',
  usage: `usage: hygiene-relay passwd

Reads a password and prints its scrypt hash, for clients.users[].password. On a terminal
it asks twice and shows nothing as you type; otherwise it reads one line from standard
input (printf '%s\\n' "$PASSWORD" | hygiene-relay passwd).

options:
${HELP_HELP}
`,
};

/** `passwd`: a password, its scrypt hash for clients.users on standard output. */
export async function passwd(args: string[]): Promise<void> {
  parseOptions(args, PASSWD, {});
  const password = process.stdin.isTTY ? await askTwice() : await firstLine();
  process.stdout.write(`${await hashPassword(password)}\n`);
}

/** From a pipe or file: the first line, as scripts pass it. */
async function firstLine(): Promise<string> {
  const lines = createInterface({ input: process.stdin, terminal: false });
  for await (const line of lines) {
    lines.close();
    if (!line) fail('empty password', 2);
    return line;
  }
  fail('no password on standard input', 2);
}

/** From a terminal: typed twice without echo, so a typo cannot become the password unseen. */
async function askTwice(): Promise<string> {
  // readline still edits the line (backspace), but what it would echo goes nowhere.
  const silent = new Writable({ write: (_chunk, _encoding, done) => done() });
  const terminal = createInterface({ input: process.stdin, output: silent, terminal: true });
  // In raw mode Ctrl-C reaches readline instead of ending the process: end it as the shell expects.
  terminal.on('SIGINT', () => {
    process.stderr.write('\n');
    process.exit(130);
  });
  const lines = terminal[Symbol.asyncIterator]();
  const ask = async (prompt: string): Promise<string | undefined> => {
    process.stderr.write(prompt);
    const { value, done } = await lines.next();
    process.stderr.write('\n');
    return done ? undefined : value;
  };
  const first = await ask('password: ');
  const second = first ? await ask('again: ') : undefined;
  terminal.close();
  if (first === undefined) fail('no password entered', 2);
  if (!first) fail('empty password', 2);
  if (second !== first) fail('the passwords differ: nothing printed, run it again', 2);
  return first;
}
