import { spawn, type ChildProcess } from 'node:child_process';
import { createPrivateKey } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { stringify } from 'yaml';
import { check, run, stop, until } from '../interop/exec.ts';
import { postfixInstance } from '../interop/servers.ts';
import { makeKey, type TestKey } from '../test/harness/dkim.ts';
import { DnsServer } from '../test/harness/dns-server.ts';
import { freePort } from '../test/harness/world.ts';
import type { Report } from './sink.ts';

/** The sending organisation: From and MAIL FROM are in it, and every system signs for it. */
export const SENDER = 'alice@example.test';
/** The recipient domain, whose MX is the sink. */
export const RECIPIENT = 'bob@sink.bench';
export const SINK_HOST = '127.0.0.10';
/** The relay sends from here; its PTR names its HELO (the relay checks its own identity). */
const RELAY_EGRESS = '127.0.0.2';
const TTL = 3600;
const START_TIMEOUT = 30_000;

/** A system under load: where smtp-source connects, and which processes are its cost. */
export interface System {
  /** Short name for --systems and the tables' keys. */
  readonly id: string;
  readonly label: string;
  readonly port: number;
  /** DKIM-Signature fields each delivered message must carry. */
  readonly signatures: number;
  /** Roots of its process trees, read afresh (Postfix's master is found through its pid file). */
  roots(): number[];
  stop(): Promise<void>;
}

export interface Keys {
  rsa: TestKey;
  ed25519: TestKey;
}

/**
 * The bench's zone, served on loopback: the sink's MX, the sender's SPF, DMARC and DKIM keys,
 * the relay egress's PTR. Long TTLs, so that after the warm-up no measured round waits on DNS.
 */
export async function startDns(dir: string): Promise<{ dns: DnsServer; keys: Keys }> {
  const dns = await DnsServer.start();
  const keys = { rsa: makeKey(dir, 'example.test', 's2026', 'rsa'), ed25519: makeKey(dir, 'example.test', 'e2026', 'ed25519') };
  for (const key of [keys.rsa, keys.ed25519]) dns.add(`${key.selector}._domainkey.${key.domain}`, { type: 'TXT', data: key.record, ttl: TTL });
  dns.add('sink.bench', { type: 'MX', data: { preference: 10, exchange: 'mx.sink.bench' }, ttl: TTL });
  dns.add('mx.sink.bench', { type: 'A', data: SINK_HOST, ttl: TTL });
  // Postfix leaves from 127.0.0.1, the relay from its egress: both are on loopback.
  dns.add('example.test', { type: 'TXT', data: 'v=spf1 ip4:127.0.0.0/8 -all', ttl: TTL });
  dns.add('_dmarc.example.test', { type: 'TXT', data: 'v=DMARC1; p=reject', ttl: TTL });
  dns.addPtr(RELAY_EGRESS, 'relay-out.example.test', { ttl: TTL });
  return { dns, keys };
}

/** The discarding sink (bench/sink.ts) as its own process, and its control channel. */
export class Sink {
  readonly port: number;
  readonly child: ChildProcess;
  #replies: ((line: string) => void)[] = [];

  private constructor(child: ChildProcess, port: number, lines: ReturnType<typeof createInterface>) {
    this.child = child;
    this.port = port;
    lines.on('line', (line) => this.#replies.shift()?.(line));
  }

  static async start(dns: DnsServer, sampleEvery: number): Promise<Sink> {
    const child = spawn(process.execPath, [path.join(import.meta.dirname, 'sink.ts'), '--host', SINK_HOST, '--dns', dns.address, '--sample-every', String(sampleEvery)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const lines = createInterface({ input: child.stdout! });
    const port = await new Promise<number>((resolve, reject) => {
      lines.once('line', (line) => resolve((JSON.parse(line) as { port: number }).port));
      child.once('exit', (code) => reject(new Error(`the sink exited with ${code} while starting`)));
    });
    return new Sink(child, port, lines);
  }

  #ask<T>(cmd: string): Promise<T> {
    return new Promise((resolve) => {
      // The sink answers in order, one line a command.
      this.#replies.push((line) => resolve(JSON.parse(line) as T));
      this.child.stdin!.write(`${JSON.stringify({ cmd })}\n`);
    });
  }

  reset = (): Promise<unknown> => this.#ask('reset');
  count = async (): Promise<number> => (await this.#ask<{ messages: number }>('count')).messages;
  report = (): Promise<Report> => this.#ask('report');

  /** The bare sink as a system: smtp-source straight to it, the ceiling of this machine. */
  asSystem(): System {
    return { id: 'sink', label: 'bare sink', port: this.port, signatures: 0, roots: () => [this.child.pid!], stop: async () => undefined };
  }

  async stop(): Promise<void> {
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.stdin!.end();
    await exited;
  }
}

export type RelayVariant = 'rsa' | 'ed25519' | 'dual';
const RELAY_LABEL: Record<RelayVariant, string> = { rsa: 'relay RSA-2048', ed25519: 'relay Ed25519', dual: 'relay RSA + Ed25519' };

/**
 * hygiene-relay as an admin starts it (`hygiene-relay start --config FILE`), with preflight
 * under enforce, delivering by MX to the sink. Its log goes to a file: parsing every
 * transaction record in the driver would put the driver's CPU into the measurement.
 */
/** How to start a relay other than the default (this tree's, through its launcher, as the bench measures it). */
export interface RelayStart {
  /** The relay tree whose bin/ and src/ run: another checkout's code measured by this harness (a profile of an older commit). */
  root?: string;
  /**
   * Start `ROOT/bin/hygiene-relay.ts` with this Node and these flags instead of through the
   * launcher (whose own flags are fixed): `--cpu-prof`, `--heapsnapshot-signal`.
   */
  nodeFlags?: string[];
  /** Settings merged into the config's sections (memory: more clients, a bigger message, the spool). */
  config?: Record<string, Record<string, unknown>>;
}

const UNLIMITED = { perMinute: false, perHour: false, perDay: false, messages: { perMinute: false, perHour: false, perDay: false } };

export async function startRelay(dir: string, variant: RelayVariant, workers: number | 'auto', dns: DnsServer, keys: Keys, sink: Sink, how: RelayStart = {}): Promise<System> {
  const port = await freePort();
  const label = workers === 1 ? RELAY_LABEL[variant] : `${RELAY_LABEL[variant]}, workers: ${workers}`;
  const config: Record<string, unknown> = {
    // Left out at its default, so that a tree from before workers existed takes the config.
    ...(workers === 1 ? {} : { workers }),
    listeners: [{ host: '127.0.0.1', port }],
    clients: { networks: ['127.0.0.1/32'] },
    egress: [{ ip: RELAY_EGRESS, helo: 'auto' }],
    dns: { servers: [dns.address], timeout: '1s', tries: 2 },
    delivery: { port: sink.port, connectTimeout: '2s', pool: { maxIdle: 50 } },
    defaultPolicy: 'enforce',
    domains: {
      'example.test': {
        policy: 'enforce',
        require: ['dmarc'],
        dkim: [
          ...(variant === 'ed25519' ? [] : [{ selector: keys.rsa.selector, key: keys.rsa.file }]),
          ...(variant === 'rsa' ? [] : [{ selector: keys.ed25519.selector, key: keys.ed25519.file }]),
        ],
      },
    },
    memo: { path: path.join(dir, `memo-${variant}.sqlite`) },
    log: { level: 'info' },
    http: null,
    control: { socket: null },
    // The start-up doctor would look the egress up in public blocklists this zone has not got.
    doctor: { blocklists: [] },
  };
  // The bench is one sender sending thousands a minute: exactly what the outbound abuse guard
  // stops. Off for the measurement (a tree from before the guard has no such key).
  if (!how.root) config.abuse = { limits: UNLIMITED, addressLimits: UNLIMITED, anomaly: false };
  for (const [section, settings] of Object.entries(how.config ?? {})) config[section] = { ...(config[section] as Record<string, unknown> | undefined), ...settings };
  const file = path.join(dir, `relay-${variant}.yaml`);
  const logFile = path.join(dir, `relay-${variant}.log`);
  writeFileSync(file, stringify(config));
  const log = openSync(logFile, 'w');
  const root = how.root ?? path.resolve(import.meta.dirname, '..');
  // The launcher is what admins and systemd start, with the Node flags it sets.
  const [command, args] = how.nodeFlags
    ? [process.execPath, [...how.nodeFlags, path.join(root, 'bin/hygiene-relay.ts')]]
    : [path.join(root, 'bin/hygiene-relay'), []];
  const child = spawn(command, [...args, 'start', '--config', file], {
    stdio: ['ignore', log, log],
    // A group of its own, as stop() expects (it signals the group).
    detached: true,
  });
  await until(`${label} to log "relay started"`, START_TIMEOUT, () => {
    if (child.exitCode !== null) throw new Error(`${label} exited with ${child.exitCode}:\n${readFileSync(logFile, 'utf8')}`);
    return readFileSync(logFile, 'utf8').includes('"relay started"');
  });
  return {
    id: `relay-${variant}`,
    label,
    port,
    signatures: variant === 'dual' ? 2 : 1,
    roots: () => [child.pid!],
    stop: () => stop(child),
  };
}

export interface Versions {
  postfix: string;
  opendkim: string;
}

/** Postfix's mail_version and OpenDKIM's, or undefined when either is not installed. */
export async function postfixVersions(): Promise<Versions | undefined> {
  if (!existsSync('/usr/sbin/postfix') || !existsSync('/usr/sbin/opendkim')) return undefined;
  const postfix = (await check('postconf', ['-d', '-h', 'mail_version'])).trim();
  const opendkim = /OpenDKIM Filter v(\S+)/.exec((await run('/usr/sbin/opendkim', ['-V'])).stdout)?.[1] ?? 'unknown';
  return { postfix, opendkim };
}

/**
 * Postfix + OpenDKIM as a signing relay in front of the sink, the stack admins compare with,
 * set up as the issue-15 baseline was measured: an instance of its own (`postfix -c DIR`, its queue and log in DIR, never /etc/postfix), chroot off, every
 * message through an OpenDKIM milter on a unix socket signing with the relay's RSA key.
 */
export async function startPostfix(keys: Keys, sink: Sink, versions: Versions): Promise<System> {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), 'hygiene-bench-postfix-'));
  mkdirSync(path.join(dir, 'dkim'));
  // Postfix's processes run as postfix and must reach their data directory and the milter
  // socket inside DIR (mkdtemp makes it 0700).
  chmodSync(dir, 0o755);

  // OpenDKIM reads RSA keys in the traditional PKCS#1 form only.
  const pkcs1 = path.join(dir, 'dkim', 'rsa.pem');
  writeFileSync(pkcs1, createPrivateKey(readFileSync(keys.rsa.file)).export({ type: 'pkcs1', format: 'pem' }), { mode: 0o600 });
  const socket = path.join(dir, 'dkim', 'opendkim.sock');
  writeFileSync(path.join(dir, 'dkim', 'KeyTable'), `bench ${keys.rsa.domain}:${keys.rsa.selector}:${pkcs1}\n`);
  writeFileSync(path.join(dir, 'dkim', 'SigningTable'), `*@${keys.rsa.domain} bench\n`);
  const opendkimConf = path.join(dir, 'dkim', 'opendkim.conf');
  writeFileSync(
    opendkimConf,
    [
      'Mode s',
      `Socket local:${socket}`,
      // Postfix's processes (user postfix) connect to it.
      'UMask 000',
      `PidFile ${path.join(dir, 'dkim', 'opendkim.pid')}`,
      'Syslog no',
      'Canonicalization relaxed/relaxed',
      `KeyTable ${path.join(dir, 'dkim', 'KeyTable')}`,
      `SigningTable refile:${path.join(dir, 'dkim', 'SigningTable')}`,
      // The key lives in a temp directory others could traverse; OpenDKIM would refuse it.
      'RequireSafeKeys no',
      // Debian's default: the From field is signed once more than it occurs, as the relay does.
      'OversignHeaders From',
      '',
    ].join('\n'),
  );
  const { config, maillog } = await postfixInstance(dir, {
    name: 'bench',
    hostname: 'postfix.example.test',
    domain: 'example.test',
    mynetworks: '127.0.0.1/32',
    relayhost: `[${SINK_HOST}]:${sink.port}`,
    extra: [
      'local_transport = error:no local delivery',
      `smtpd_milters = unix:${socket}`,
      'milter_protocol = 6',
      // A message OpenDKIM could not sign is refused for now, never relayed unsigned.
      'milter_default_action = tempfail',
    ],
  });
  // Debian's master.cf with chroot off, as the baseline was measured, smtpd on our port only.
  copyFileSync('/usr/share/postfix/master.cf.dist', path.join(config, 'master.cf'));
  await check('postconf', ['-c', config, '-F', '*/*/chroot = n']);
  await check('postconf', ['-c', config, '-MX', 'smtp/inet']);
  await check('postconf', ['-c', config, '-M', `127.0.0.1:${port}/inet=127.0.0.1:${port} inet n - n - - smtpd`]);
  // Their output to files (opendkim's) or nowhere (Postfix logs to maillog_file): a daemon
  // holding the driver's stdout would keep a pipe that reads it open after the driver ends.
  const opendkimLog = path.join(dir, 'dkim', 'opendkim.log');
  const out = openSync(opendkimLog, 'w');
  // -f: in the foreground, so that it is our child and its CPU is found from its pid.
  const opendkim = spawn('/usr/sbin/opendkim', ['-f', '-x', opendkimConf], { stdio: ['ignore', out, out], detached: true });
  let master: ChildProcess | undefined;
  const stopAll = async (): Promise<void> => {
    // The master puts itself in a session of its own: `postfix stop` ends it, then start-fg.
    if (master) {
      await run('postfix', ['-c', config, 'stop']);
      await stop(master);
    }
    await stop(opendkim);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await until('OpenDKIM to open its socket', START_TIMEOUT, () => {
      if (opendkim.exitCode !== null) throw new Error(`opendkim exited with ${opendkim.exitCode}: ${readFileSync(opendkimLog, 'utf8')}`);
      return existsSync(socket);
    });
    const child = spawn('postfix', ['-c', config, 'start-fg'], { stdio: ['ignore', 'ignore', 'ignore'], detached: true });
    master = child;
    const pidFile = path.join(dir, 'spool/pid/master.pid');
    const masterPid = (): number | undefined => {
      const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8').trim()) : 0;
      return pid > 0 && existsSync(`/proc/${pid}`) ? pid : undefined;
    };
    await until('Postfix to log that it started', START_TIMEOUT, () => {
      if (child.exitCode !== null) throw new Error(`postfix start-fg exited with ${child.exitCode}: ${existsSync(maillog) ? readFileSync(maillog, 'utf8') : ''}`);
      return existsSync(maillog) && readFileSync(maillog, 'utf8').includes('daemon started') && masterPid() !== undefined;
    });
    return {
      id: 'postfix',
      label: `Postfix ${versions.postfix} + OpenDKIM ${versions.opendkim}`,
      port,
      signatures: 1,
      roots: () => [masterPid() ?? child.pid!, opendkim.pid!],
      stop: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
