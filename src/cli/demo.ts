import { HELP_HELP, parseOptions, type Command } from './common.ts';

const DEMO: Command = {
  name: 'demo',
  usage: `usage: hygiene-relay demo

Runs the whole relay path on a simulated internet (DNS, MX hosts), on loopback only,
and prints what each step did.

options:
${HELP_HELP}
`,
};

/** `demo`: loaded only when asked for, since it brings the test harness's simulated internet. */
export async function demo(args: string[]): Promise<void> {
  parseOptions(args, DEMO, {});
  const { runDemo } = await import('../../demo/demo.ts');
  process.exitCode = await runDemo();
}
