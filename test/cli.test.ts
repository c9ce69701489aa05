import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify } from 'yaml';
import { verifyPassword } from '../src/inbound/index.ts';
import { makeKey } from './harness/dkim.ts';
import { RelayProcess, runCli } from './harness/process.ts';
import { relayTlsFiles } from './harness/tls.ts';
import { Internet } from './harness/world.ts';

const root = path.resolve(import.meta.dirname, '..');
const BIN = path.join(root, 'bin/hygiene-relay.ts');

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The one line a failing command writes, and nothing else anywhere. */
async function failsWith(args: string[], line: string, code = 2): Promise<void> {
  const result = await runCli(args);
  assert.equal(result.stderr, `${line}\n`, `hygiene-relay ${args.join(' ')}`);
  assert.equal(result.code, code);
  assert.equal(result.stdout, '');
}

describe('CLI: help, version, and one line for a command used wrongly', () => {
  it('prints the usage for --help and -h, and the package version for --version and -V', async () => {
    for (const flag of ['--help', '-h']) {
      const result = await runCli([flag]);
      assert.equal(result.code, 0);
      assert.equal(result.stderr, '');
      assert.match(result.stdout, /^usage: hygiene-relay <command> \[options\]\n/);
      assert.match(result.stdout, /^ {2}config check \[--config FILE\]$/m);
      assert.match(result.stdout, /^ {2}abuse list \| release SENDER \[--config FILE\]$/m);
    }
    const { version } = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      assert.deepEqual(await runCli([flag]), { code: 0, stdout: `hygiene-relay ${version}\n`, stderr: '' });
    }
  });

  const commands = [['start'], ['passwd'], ['dkim'], ['dkim', 'keygen'], ['dkim', 'check'], ['config'], ['config', 'check'], ['abuse'], ['abuse', 'list'], ['abuse', 'release'], ['demo']];
  for (const command of commands) {
    it(`\`${command.join(' ')} --help\` prints its usage on stdout, exit 0`, async () => {
      for (const flag of ['--help', '-h']) {
        const result = await runCli([...command, flag]);
        assert.equal(result.stderr, '');
        assert.equal(result.code, 0);
        assert.ok(result.stdout.startsWith(`usage: hygiene-relay ${command.join(' ')}`), result.stdout);
      }
    });
  }

  const misuses: [string[], string][] = [
    [['frob'], 'unknown command "frob"; see hygiene-relay --help'],
    [['--frob'], 'unknown option --frob; see hygiene-relay --help'],
    [['start', '--conf', 'relay.yaml'], 'unknown option --conf for start; see hygiene-relay start --help'],
    [['start', '--config'], 'missing value of option --config for start; see hygiene-relay start --help'],
    [['start', '-c', '--help'], 'missing value of option -c for start; see hygiene-relay start --help'],
    [['start', 'relay.yaml'], 'unexpected argument "relay.yaml" for start; see hygiene-relay start --help'],
    [['passwd', '--help=yes'], 'option --help for passwd takes no value; see hygiene-relay passwd --help'],
    [['dkim'], 'dkim needs a command: keygen or check; see hygiene-relay dkim --help'],
    [['dkim', 'sign'], 'unknown dkim command "sign": use keygen or check; see hygiene-relay dkim --help'],
    [['dkim', '--domain', 'x.test'], 'unknown option --domain for dkim; see hygiene-relay dkim --help'],
    [['dkim', 'keygen', '--domain', 'example.test'], 'dkim keygen needs --domain and --selector; see hygiene-relay dkim keygen --help'],
    [['dkim', 'keygen', '--domain', 'example.test', '--selector', 's1', '--bits', '512'], '--bits must be 1024 to 4096 (2048 recommended), not "512"; see hygiene-relay dkim keygen --help'],
    [['dkim', 'check', '-x'], 'unknown option -x for dkim check; see hygiene-relay dkim check --help'],
    [['config'], 'config needs a command: check; see hygiene-relay config --help'],
    [['config', 'check', '--config'], 'missing value of option --config for config check; see hygiene-relay config check --help'],
    [['demo', 'now'], 'unexpected argument "now" for demo; see hygiene-relay demo --help'],
  ];
  for (const [args, line] of misuses) {
    it(`\`${args.join(' ')}\`: one line on stderr, exit 2`, () => failsWith(args, `hygiene-relay: ${line}`));
  }
});

describe('config check', () => {
  let dir: string;
  let internet: Internet;
  let tls: Awaited<ReturnType<typeof relayTlsFiles>>;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-cli-'));
    internet = await Internet.start();
    tls = await relayTlsFiles();
    chmodSync(tls.key, 0o600);
  });
  after(async () => {
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
    rmSync(tls.dir, { recursive: true, force: true });
  });

  function configFile(name: string, overrides: Record<string, unknown> = {}): string {
    const file = path.join(dir, `${name}.yaml`);
    writeFileSync(file, stringify(internet.relayConfig({ listeners: [{ host: '127.0.0.1', port: 0, starttls: true }], tls: { cert: tls.cert, key: tls.key }, ...overrides })));
    return file;
  }

  it('prints one OK line per part of a good configuration, exit 0', async () => {
    const key = makeKey(dir, 'example.test', 's1', 'rsa');
    const file = configFile('good', { domains: { 'example.test': { dkim: [{ selector: 's1', key: key.file }] } } });
    const result = await runCli(['config', 'check', '--config', file]);
    assert.equal(result.stderr, '');
    const lines = result.stdout.trimEnd().split('\n');
    assert.equal(lines[0], `OK   ${file}: valid (1 listener, 1 egress identity, 1 domain)`);
    assert.equal(lines[1], `OK   DKIM example.test selector s1 (rsa-sha256 2048 bits, active) loaded from ${key.file}`);
    assert.match(lines[2], /^OK {3}playbook: \d+ rows$/);
    assert.match(lines[3], new RegExp(`^OK {3}TLS certificate ${tls.cert} \\(DNS:relay\\.test, IP Address:127\\.0\\.0\\.1; valid until \\d{4}-\\d\\d-\\d\\d\\) and its key ${tls.key}$`));
    assert.equal(lines[4], 'OK   egress 127.0.0.2: verified, HELO relay-out.example.test');
    assert.equal(lines[5], `OK   ${file}: 0 errors, 0 warnings`);
    assert.equal(lines.length, 6);
    assert.equal(result.code, 0);
  });

  it('a YAML syntax error: the one line of start, with line:column, exit 2', async () => {
    const file = path.join(dir, 'syntax.yaml');
    writeFileSync(file, 'egress:\n  - ip: 127.0.0.2\nclients: [\n');
    for (const command of [['config', 'check'], ['start']]) {
      const result = await runCli([...command, '--config', file]);
      assert.equal(result.code, 2);
      assert.equal(result.stderr, `hygiene-relay: config error: ${file}:4:1: not valid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]\n`);
    }
  });

  it('missing TLS files: a FAIL line from config check, one line naming tls.key from start, exit 2', async () => {
    const missing = path.join(dir, 'nowhere', 'tls.key');
    const file = configFile('no-tls-key', { tls: { cert: tls.cert, key: missing } });
    const check = await runCli(['config', 'check', '--config', file]);
    assert.match(check.stdout, new RegExp(`^FAIL TLS tls\\.key: cannot read ${missing} \\(ENOENT\\)$`, 'm'));
    assert.match(check.stdout, /: 1 error, 0 warnings\n$/);
    assert.equal(check.code, 2);
    const start = await runCli(['start', '--config', file]);
    assert.equal(start.stderr, `hygiene-relay: config error: ${file}: tls.key: cannot read ${missing} (ENOENT)\n`);
    assert.equal(start.code, 2);

    const noCert = await runCli(['config', 'check', '--config', configFile('no-tls-cert', { tls: { cert: path.join(dir, 'tls.crt'), key: tls.key } })]);
    assert.match(noCert.stdout, new RegExp(`^FAIL TLS tls\\.cert: cannot read ${path.join(dir, 'tls.crt')} \\(ENOENT\\)$`, 'm'));
    assert.equal(noCert.code, 2);
  });

  it('a TLS key that is not the certificate\'s: FAIL naming both files, and start refuses in one line', async () => {
    const other = path.join(dir, 'other.key');
    writeFileSync(other, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    const file = configFile('wrong-tls-key', { tls: { cert: tls.cert, key: other } });
    const check = await runCli(['config', 'check', '--config', file]);
    assert.match(check.stdout, new RegExp(`^FAIL TLS tls\\.key: ${other} is not the private key of the certificate in ${tls.cert}$`, 'm'));
    assert.equal(check.code, 2);
    const start = await runCli(['start', '--config', file]);
    assert.equal(start.stderr, `hygiene-relay: config error: ${file}: tls.key: ${other} is not the private key of the certificate in ${tls.cert}\n`);
    assert.equal(start.code, 2);
  });

  it('private keys readable by group or others: WARN lines naming file and mode, exit 1, and warning records at start', async () => {
    const key = makeKey(dir, 'example.test', 'open', 'rsa');
    chmodSync(key.file, 0o644);
    const tlsKey = path.join(dir, 'open-tls.key');
    writeFileSync(tlsKey, readFileSync(tls.key));
    chmodSync(tlsKey, 0o640);
    const overrides = { tls: { cert: tls.cert, key: tlsKey }, domains: { 'example.test': { dkim: [{ selector: 'open', key: key.file }] } } };
    const check = await runCli(['config', 'check', '--config', configFile('open-keys', overrides)]);
    const dkimWarning = `example.test selector open: private key ${key.file} has mode 0644, readable by group or others: chmod 600 ${key.file} (owned by the relay's user)`;
    const tlsWarning = `tls.key: private key ${tlsKey} has mode 0640, readable by group or others: chmod 600 ${tlsKey} (owned by the relay's user)`;
    assert.match(check.stdout, new RegExp(`^WARN DKIM ${escape(dkimWarning)}$`, 'm'));
    assert.match(check.stdout, new RegExp(`^WARN TLS ${escape(tlsWarning)}$`, 'm'));
    assert.match(check.stdout, /: 0 errors, 2 warnings\n$/);
    assert.equal(check.code, 1);

    const relay = await RelayProcess.start(path.join(dir, 'open-keys-start.yaml'), internet.relayConfig({ listeners: [{ host: '127.0.0.1', port: 0, starttls: true }], ...overrides }));
    try {
      const dkim = await relay.waitFor((r) => r.msg === 'DKIM key warning');
      assert.equal(dkim.level, 'warn');
      assert.equal(dkim.warning, dkimWarning);
      const tlsRecord = await relay.waitFor((r) => r.msg === 'TLS warning');
      assert.equal(tlsRecord.level, 'warn');
      assert.equal(tlsRecord.warning, tlsWarning);
    } finally {
      await relay.stop();
    }
  });

  it('an egress identity that does not verify: WARN and exit 1; FAIL and exit 2 in strict mode', async () => {
    const egress = [{ ip: '127.0.0.2' }, { ip: '127.0.0.9' }];
    const check = await runCli(['config', 'check', '--config', configFile('unverified', { egress })]);
    assert.match(check.stdout, /^OK {3}egress 127\.0\.0\.2: verified, HELO relay-out\.example\.test$/m);
    assert.match(check.stdout, /^WARN egress 127\.0\.0\.9: no PTR record for 127\.0\.0\.9 \(ENOTFOUND\): publish one naming the relay's HELO host \(used with HELO \[127\.0\.0\.9\], but receivers distrust mail from it\)$/m);
    assert.equal(check.code, 1);
    const strict = await runCli(['config', 'check', '--config', configFile('unverified-strict', { egress, strict: true })]);
    assert.match(strict.stdout, /^FAIL egress 127\.0\.0\.9: no PTR record for 127\.0\.0\.9 \(ENOTFOUND\): .* \(strict: the relay does not start\)$/m);
    assert.equal(strict.code, 2);
  });
});

/**
 * The CLI on a pseudo-terminal (util-linux `script`), answering each prompt once it is
 * written: what the terminal showed, and the exit code.
 */
function inTerminal(args: string[], answers: string[]): Promise<{ code: number | null; screen: string }> {
  const prompts = ['password: ', 'again: '];
  const command = [process.execPath, BIN, ...args].map((arg) => `'${arg}'`).join(' ');
  const child = spawn('script', ['--quiet', '--return', '--command', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] });
  let screen = '';
  let answered = 0;
  let searchFrom = 0;
  child.stdout.on('data', (chunk: Buffer) => {
    screen += chunk.toString();
    const at = answered < answers.length ? screen.indexOf(prompts[answered], searchFrom) : -1;
    if (at < 0) return;
    searchFrom = at + prompts[answered].length;
    // Enter on a terminal in raw mode is a carriage return.
    child.stdin.write(`${answers[answered++]}\r`);
  });
  return new Promise((resolve) => {
    child.once('exit', (code) => {
      child.stdin.end();
      resolve({ code, screen });
    });
  });
}

describe('passwd on a terminal', () => {
  it('asks twice without echo and prints a hash that verifies', { timeout: 30_000 }, async () => {
    const { code, screen } = await inTerminal(['passwd'], ['tr0ub4dor&3', 'tr0ub4dor&3']);
    assert.equal(code, 0, screen);
    assert.ok(!screen.includes('tr0ub4dor'), `the password was echoed: ${JSON.stringify(screen)}`);
    assert.match(screen, /^password: \r?\nagain: \r?\n/);
    const hash = /scrypt\$\S+/.exec(screen)?.[0];
    assert.ok(hash, screen);
    assert.equal(await verifyPassword('tr0ub4dor&3', hash), true);
  });

  it('two different answers: one line, exit 2, no hash', { timeout: 30_000 }, async () => {
    const { code, screen } = await inTerminal(['passwd'], ['tr0ub4dor&3', 'tr0ub4dor&4']);
    assert.equal(code, 2);
    assert.equal(screen.replace(/\r\n/g, '\n'), 'password: \nagain: \nhygiene-relay: the passwords differ: nothing printed, run it again\n');
  });
});
