import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { stringify } from 'yaml';
import { makeKey } from './harness/dkim.ts';
import { send } from './harness/send.ts';
import { freePort, Internet, message } from './harness/world.ts';

/**
 * The project's own Dockerfile, built and run with Debian's podman (no Docker engine or
 * registry here: ../shared/reference/containers-here.md), relaying through the harness's
 * loopback internet with --network host.
 */
const ROOT = path.resolve(import.meta.dirname, '..');
const IMAGE = 'localhost/hygiene-relay:test';
/** The image's user (the base image's `node`). */
const UID = 1000;
const SHUTDOWN_TIMEOUT_S = 10;

function podman(args: string[], options: { timeoutMs?: number } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('podman', args, { maxBuffer: 64 * 1024 * 1024, timeout: options.timeoutMs ?? 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

async function must(command: string, args: string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { maxBuffer: 64 * 1024 * 1024, timeout: timeoutMs, cwd: ROOT }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${command} ${args.join(' ')}: ${err.message}\n${stdout}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

// podman is installed by scripts/system-deps.sh (npm test's pretest) where packages can be:
// as root with apt-get, as on CI. Anywhere else the test cannot run; on CI that is a failure.
const cannot = process.getuid?.() !== 0 ? 'not root' : !existsSync('/usr/bin/apt-get') ? 'no apt-get' : undefined;
if (cannot && process.env.CI) throw new Error(`the container test must run on CI but cannot: ${cannot}`);
if (cannot) console.log(`container test: podman needs root with apt-get (${cannot}): not run here; CI runs it`);
else
  describe('the Dockerfile\'s image', { timeout: 180_000 }, () => {
    let internet: Internet;
    let dir: string;
    let name: string;
    let container: ChildProcess;
    let output: string[];
    let port: number;
    let httpPort: number;
    let exited: Promise<number | null>;

    before(async () => {
      await must('bash', ['scripts/container-deps.sh']);
      // The stand-in base carries the Node release the Dockerfile pins (its build checks it).
      const version = /^ARG NODE_VERSION=(\S+)$/m.exec(readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'))?.[1];
      assert.ok(version, 'Dockerfile: no ARG NODE_VERSION');
      await must('bash', ['test/harness/node-base-image.sh', version]);

      dir = mkdtempSync(path.join(tmpdir(), 'relay-container-'));
      // npm in RUN steps must trust the machine's CA bundle: HTTPS here is re-signed by a local CA.
      const npmrc = path.join(dir, 'npmrc');
      writeFileSync(npmrc, 'cafile=/etc/ssl/certs/ca-certificates.crt\n');
      const ca = existsSync('/etc/ssl/certs/ca-certificates.crt') ? ['-v', '/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro', '-v', `${npmrc}:/usr/local/etc/npmrc:ro`] : [];
      await must('podman', ['build', '--pull=never', '--format', 'docker', '--network', 'host', ...ca, '-t', IMAGE, '.']);

      internet = await Internet.start();
      const keys = path.join(dir, 'keys');
      const state = path.join(dir, 'state');
      mkdirSync(keys);
      mkdirSync(state);
      const key = makeKey(keys, 'example.test', 's1', 'rsa', { dns: internet.dns });
      internet.dns.add('_dmarc.example.test', { type: 'TXT', data: 'v=DMARC1; p=reject' });
      // As README "Running in a container" says: the key readable by the image's user, the
      // memo's volume writable by it.
      chownSync(key.file, UID, UID);
      chownSync(state, UID, UID);
      port = await freePort();
      httpPort = await freePort();
      const config = internet.relayConfig({
        listeners: [{ host: '127.0.0.1', port }],
        // The image's defaults: memo at /var/lib/hygiene-relay, control socket in /run/hygiene-relay.
        memo: {},
        http: { host: '127.0.0.1', port: httpPort },
        shutdownTimeout: `${SHUTDOWN_TIMEOUT_S}s`,
        domains: { 'example.test': { dkim: [{ selector: 's1', key: '/etc/hygiene-relay/keys/example.test.s1.pem' }] } },
      });
      writeFileSync(path.join(dir, 'relay.yaml'), stringify(config), { mode: 0o644 });

      name = `hygiene-relay-test-${process.pid}`;
      container = spawn('podman', [
        'run', '--rm', '--name', name, '--network', 'host', '--read-only',
        '-v', `${path.join(dir, 'relay.yaml')}:/etc/hygiene-relay/relay.yaml:ro`,
        '-v', `${keys}:/etc/hygiene-relay/keys:ro`,
        '-v', `${state}:/var/lib/hygiene-relay`,
        '-e', `HYGIENE_RELAY_HEALTHZ=http://127.0.0.1:${httpPort}/healthz`,
        IMAGE,
      ], { stdio: ['ignore', 'pipe', 'pipe'] });
      output = [];
      let stderr = '';
      container.stderr!.on('data', (chunk) => (stderr += chunk));
      exited = new Promise((resolve) => container.once('exit', (code) => resolve(code)));
      await new Promise<void>((resolve, reject) => {
        createInterface({ input: container.stdout! }).on('line', (line) => {
          output.push(line);
          if (line.includes('"relay started"')) resolve();
        });
        void exited.then((code) => reject(new Error(`container exited with ${code}: ${stderr}\n${output.join('\n')}`)));
      });
    });

    after(async () => {
      if (name) await podman(['rm', '-f', name]);
      await internet?.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it('relays a message: DKIM-signed with the mounted key, HELO the egress PTR', async () => {
      const sent = await send(port, 'alice@example.test', ['bob@gmail.test'], message());
      assert.equal(sent.data?.code, 250, JSON.stringify(sent));
      const [received] = await internet.destination('gmail.test').waitForMessages(1);
      assert.equal(received.helo, 'relay-out.example.test');
      assert.equal(received.clientAddress, '127.0.0.2');
      assert.deepEqual(received.verdict?.dkim, ['pass']);
      assert.equal(received.verdict?.dmarc, 'pass');
      assert.match(received.message.toString(), /^DKIM-Signature: v=1; a=rsa-sha256; c=relaxed\/relaxed; d=example\.test;\r\n\ts=s1;/m);
    });

    it('answers its HEALTHCHECK', async () => {
      const result = await podman(['healthcheck', 'run', name]);
      // 0 healthy, 1 unhealthy, 125 when the image has no HEALTHCHECK.
      assert.equal(result.code, 0, result.stdout + result.stderr);
    });

    it('checks the SMTP greeting when the HTTP port is off (http: null), and fails when neither answers', async () => {
      const closed = await freePort();
      const check = (smtp: number) => podman(['exec', '-e', `HYGIENE_RELAY_HEALTHZ=http://127.0.0.1:${closed}/healthz`, '-e', `HYGIENE_RELAY_SMTP=127.0.0.1:${smtp}`, name, 'node', '/app/bin/healthcheck.js']);
      assert.equal((await check(port)).code, 0);
      assert.equal((await check(closed)).code, 1);
    });

    it('runs the relay as PID 1, not as root', async () => {
      const exe = await podman(['exec', name, 'readlink', '/proc/1/exe']);
      assert.equal(exe.stdout.trim(), '/usr/local/bin/node', exe.stderr);
      const result = await podman(['exec', name, 'cat', '/proc/1/status']);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, new RegExp(`^Uid:\\s+${UID}\\s+${UID}\\s+${UID}\\s+${UID}$`, 'm'));
    });

    it('stops on SIGTERM with exit 0 within the drain deadline, its memo on the volume', async () => {
      const started = Date.now();
      // 30 s before podman kills it: a relay that ignored SIGTERM would exit 137, late.
      const stop = await podman(['stop', '-t', '30', name]);
      assert.equal(stop.code, 0, stop.stderr);
      assert.equal(await exited, 0, output.join('\n'));
      assert.ok(Date.now() - started < SHUTDOWN_TIMEOUT_S * 1000, `stopped after ${Date.now() - started} ms`);
      assert.ok(output.some((line) => line.includes('"stopped"')), output.join('\n'));
      assert.ok(existsSync(path.join(dir, 'state/memo.sqlite')));
    });
  });
