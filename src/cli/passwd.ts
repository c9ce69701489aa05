import { createInterface } from 'node:readline';
import { hashPassword } from '../inbound/index.ts';
import { fail } from './common.ts';

/** `passwd`: a password on standard input, its scrypt hash for clients.users on standard output. */
export async function passwd(): Promise<void> {
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
