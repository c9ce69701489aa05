import { fail } from './common.ts';
import { dkim } from './dkim.ts';
import { dns } from './dns.ts';
import { passwd } from './passwd.ts';
import { start } from './start.ts';

const USAGE = `usage: hygiene-relay <command> [options]

commands:
  start [--config FILE]   run the relay (default config: /etc/hygiene-relay/relay.yaml)
  passwd                  read a password on standard input, print its hash for clients.users
  dkim keygen --domain D --selector S [--type rsa|ed25519] [--bits N] [--out DIR]
                          write a new DKIM key (mode 0600), print its TXT record and YAML
  dkim check [--config FILE]
                          compare every configured key with the TXT record published for it
  dns flush [--config FILE]
                          make the running relay drop its cached DNS answers (control.socket)
  demo                    the whole relay path on a simulated internet, on loopback
`;

export async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'start':
      return start(rest);
    case 'passwd':
      return passwd();
    case 'dkim':
      return dkim(rest);
    case 'dns':
      return dns(rest);
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
