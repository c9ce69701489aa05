import { parseArgs } from 'node:util';
import { checkPublished, DkimKeyError, generateDkimKey, KeyRing } from '../auth/index.ts';
import { uncachedResolver } from '../dns/index.ts';
import { configArg, fail, readConfig } from './common.ts';

/** `dkim keygen` and `dkim check`. */
export async function dkim(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub === 'keygen') {
    const { values } = parseArgs({
      args: rest,
      options: { domain: { type: 'string' }, selector: { type: 'string' }, type: { type: 'string', default: 'rsa' }, bits: { type: 'string', default: '2048' }, out: { type: 'string', default: '.' } },
    });
    if (!values.domain || !values.selector) fail('dkim keygen needs --domain and --selector', 2);
    if (values.type !== 'rsa' && values.type !== 'ed25519') fail(`--type must be rsa or ed25519, not "${values.type}"`, 2);
    const bits = Number(values.bits);
    if (values.type === 'rsa' && (!Number.isInteger(bits) || bits < 1024 || bits > 4096)) fail(`--bits must be 1024 to 4096 (2048 recommended), not "${values.bits}"`, 2);
    let generated;
    try {
      generated = generateDkimKey({ domain: values.domain.toLowerCase(), selector: values.selector, type: values.type, bits, out: values.out });
    } catch (err) {
      fail(`cannot write the key: ${(err as Error).message}`, 1);
    }
    process.stdout.write(`# private key written to ${generated.file} (mode 0600)\n`);
    process.stdout.write(`# publish this TXT record:\n${generated.txtRecord}\n`);
    process.stdout.write(`# add this to the relay's configuration:\n${generated.yaml}`);
    return;
  }
  if (sub === 'check') {
    const config = readConfig(configArg(rest));
    let keys;
    try {
      keys = KeyRing.load(config.domains);
    } catch (err) {
      if (err instanceof DkimKeyError) fail(`config error: ${err.message}`, 2);
      throw err;
    }
    const resolve = uncachedResolver(config.dns);
    const results = await Promise.all(keys.keys.map((key) => checkPublished(key, resolve)));
    for (const result of results) {
      const { key } = result;
      const kind = `${key.algorithm}${key.bits ? ` ${key.bits} bits` : ''}, ${key.standby ? 'standby' : 'active'}`;
      process.stdout.write(`${result.state === 'matches' ? 'OK  ' : 'FAIL'} ${key.domain} selector ${key.selector} (${kind}): ${result.detail}\n`);
    }
    for (const warning of keys.warnings) process.stdout.write(`WARN ${warning}\n`);
    if (results.length === 0) process.stdout.write('no DKIM keys configured\n');
    process.exitCode = results.every((r) => r.state === 'matches') ? 0 : 1;
    return;
  }
  fail(`unknown dkim command "${sub ?? ''}": use keygen or check`, 2);
}
