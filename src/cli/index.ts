import { readFileSync } from 'node:fs';
import { abuse } from './abuse.ts';
import { usageError, type Command } from './common.ts';
import { config } from './config.ts';
import { demo } from './demo.ts';
import { dkim } from './dkim.ts';
import { dns } from './dns.ts';
import { doctor } from './doctor.ts';
import { logs } from './logs.ts';
import { passwd } from './passwd.ts';
import { start } from './start.ts';

const USAGE = `usage: hygiene-relay <command> [options]

commands:
  start [--config FILE]   run the relay (default config: /etc/hygiene-relay/relay.yaml)
  config check [--config FILE]
                          check a configuration (keys, TLS files, egress) before start or SIGHUP
  passwd                  read a password (twice on a terminal), print its hash for clients.users
  doctor [--config FILE] [--json] [--domain D]
                          check the DNS receivers will judge (PTR, HELO, blocklists, SPF, DKIM,
                          DMARC), printing the record to publish for each problem
  dkim keygen --domain D --selector S [--type rsa|ed25519] [--bits N] [--out DIR]
                          write a new DKIM key (mode 0600), print its TXT record and YAML
  dkim check [--config FILE]
                          compare every configured key with the TXT record published for it
  dns flush [--config FILE]
                          make the running relay drop its cached DNS answers (control.socket)
  abuse list | release SENDER [--config FILE]
                          the senders the running relay holds; let one send again
  logs [FILE|-] [--follow] [--since 1h] [--grep TEXT] [--id RELAYID]
                          the JSON records (a file or stdin) as one line per transaction
  demo                    the whole relay path on a simulated internet, on loopback

hygiene-relay <command> --help describes each; hygiene-relay --version prints the version.
`;

const TOP: Command = { name: '', usage: USAGE };

function version(): string {
  const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return version;
}

export async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'start':
      return start(rest);
    case 'config':
      return config(rest);
    case 'passwd':
      return passwd(rest);
    case 'doctor':
      return doctor(rest);
    case 'dkim':
      return dkim(rest);
    case 'dns':
      return dns(rest);
    case 'logs':
      return logs(rest);
    case 'abuse':
      return abuse(rest);
    case 'demo':
      return demo(rest);
    case undefined:
    case '-h':
    case '--help':
      process.stdout.write(USAGE);
      return;
    case '-V':
    case '--version':
      process.stdout.write(`hygiene-relay ${version()}\n`);
      return;
    default:
      usageError(TOP, command.startsWith('-') ? `unknown option ${command}` : `unknown command "${command}"`);
  }
}
