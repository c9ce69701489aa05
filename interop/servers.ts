import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { check, run, stop, until } from './exec.ts';

/** What the internal server's log says happened to one recipient in one delivery attempt. */
export interface LogEvent {
  queueId: string;
  recipient: string;
  status: 'delivered' | 'deferred' | 'bounced';
  /** The log line's reason or reply text. */
  text: string;
}

/** A real MTA run as the internal server, with the relay as its smarthost. */
export interface InternalServer {
  readonly name: string;
  /** Version and where it came from, for the report. */
  readonly version: string;
  /** Its myhostname / primary_hostname: what a Message-ID it added would end with. */
  readonly hostname: string;
  /** Where it accepts mail (127.0.0.1). */
  readonly port: number;
  /** The queue id in its reply to the end of DATA. */
  queueIdOf(reply: string): string | undefined;
  /** Every delivery result it logged so far, in order. */
  events(): LogEvent[];
  /** Makes it retry `queueId` now (a queue run forced past its retry times). */
  retry(queueId: string): Promise<void>;
  /** Messages in its queue. */
  queued(): Promise<number>;
  /** Deletes every queued message, so that a failed scenario leaves nothing for the next. */
  purge(): Promise<void>;
  /** Its whole log, for the record of a failure. */
  log(): string;
  stop(): Promise<void>;
}

const START_TIMEOUT = 20_000;
/** A hostname of the sending organisation, so that its bounces (From MAILER-DAEMON@it) are DKIM-aligned. */
const DOMAIN = 'example.test';

function readIfThere(file: string): string {
  return existsSync(file) ? readFileSync(file, 'utf8') : '';
}

interface Daemon {
  child: ChildProcess;
  /** What it wrote to stdout and stderr (its log goes to its log file). */
  output: () => string;
}

function spawnDaemon(command: string, args: string[]): Daemon {
  // Its own process group, so that stop() reaches every process it starts.
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  return { child, output: () => output };
}

async function started(name: string, daemon: Daemon, log: () => string, line: RegExp): Promise<void> {
  try {
    await until(`${name} to log that it started`, START_TIMEOUT, () => {
      if (daemon.child.exitCode !== null) throw new Error(`${name} exited with ${daemon.child.exitCode} while starting`);
      return line.test(log());
    });
  } catch (err) {
    await stop(daemon.child);
    throw new Error(`${(err as Error).message}:\n${daemon.output()}${log()}`.trim());
  }
}

/**
 * The directories and main.cf of a Postfix instance of our own in `dir`, never the system's:
 * configuration in DIR/etc (for `postfix -c`), queue, data and maillog_file in DIR. It
 * relays whatever `mynetworks` sends to `relayhost` and delivers nothing locally; `extra`
 * lines follow. master.cf is the caller's.
 */
export async function postfixInstance(
  dir: string,
  settings: { name: string; hostname: string; domain: string; mynetworks: string; relayhost: string; extra?: string[] },
): Promise<{ config: string; maillog: string }> {
  const config = path.join(dir, 'etc');
  const maillog = path.join(dir, 'maillog');
  mkdirSync(config, { recursive: true });
  mkdirSync(path.join(dir, 'spool'));
  mkdirSync(path.join(dir, 'data'));
  const postfixUser = Number((await check('id', ['-u', 'postfix'])).trim());
  chownSync(path.join(dir, 'data'), postfixUser, -1);
  writeFileSync(
    path.join(config, 'main.cf'),
    [
      // The defaults of current Postfix (what Debian's own main.cf sets too), without the
      // warnings older compatibility levels log.
      'compatibility_level = 3.6',
      `queue_directory = ${dir}/spool`,
      `data_directory = ${dir}/data`,
      `maillog_file = ${maillog}`,
      `maillog_file_prefixes = ${dir}`,
      `syslog_name = postfix-${settings.name}`,
      `myhostname = ${settings.hostname}`,
      `mydomain = ${settings.domain}`,
      // Everything goes to the relayhost; nothing is delivered locally.
      'mydestination =',
      'alias_maps =',
      'alias_database =',
      'inet_interfaces = 127.0.0.1',
      'inet_protocols = ipv4',
      `mynetworks = ${settings.mynetworks}`,
      // Loopback only: no reverse lookup of the submitting client through the system resolver.
      'smtpd_peername_lookup = no',
      `relayhost = ${settings.relayhost}`,
      ...(settings.extra ?? []),
      '',
    ].join('\n'),
  );
  return { config, maillog };
}

/**
 * Postfix from Debian's package, as its own instance: `postfix -c DIR start-fg` with a
 * main.cf and master.cf of our own, its queue, data and maillog_file in DIR. Transport
 * settings are Postfix's defaults; relayhost is the relay.
 */
export async function startPostfix(dir: string, port: number, relay: { host: string; port: number }): Promise<InternalServer> {
  const hostname = `postfix.${DOMAIN}`;
  const { config, maillog } = await postfixInstance(dir, { name: 'interop', hostname, domain: DOMAIN, mynetworks: '127.0.0.0/8', relayhost: `[${relay.host}]:${relay.port}` });
  // Debian's master.cf without chroot (a chroot would need copies of /etc files in the
  // queue directory), with the smtpd listener on our port.
  writeFileSync(
    path.join(config, 'master.cf'),
    `127.0.0.1:${port} inet n - n - - smtpd
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
smtp      unix  - - n -     - smtp
relay     unix  - - n -     - smtp
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
local     unix  - n n -     - local
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
`,
  );
  const version = (await check('postconf', ['-c', config, '-h', 'mail_version'])).trim();
  const debian = (await check('dpkg-query', ['-W', '-f=${Version}', 'postfix'])).trim();
  const log = (): string => readIfThere(maillog);
  const daemon = spawnDaemon('postfix', ['-c', config, 'start-fg']);
  await started('Postfix', daemon, log, /daemon started/);

  const events = (): LogEvent[] => {
    const found: LogEvent[] = [];
    for (const match of log().matchAll(/: ([0-9A-Za-z]+): to=<([^>]*)>,.* status=(sent|deferred|bounced|expired) \((.*)\)$/gm)) {
      const status = match[3] === 'sent' ? 'delivered' : match[3] === 'deferred' ? 'deferred' : 'bounced';
      found.push({ queueId: match[1], recipient: match[2], status, text: match[4] });
    }
    return found;
  };
  const queue = async (): Promise<{ queue_id: string; queue_name: string }[]> =>
    (await check('postqueue', ['-c', config, '-j']))
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as { queue_id: string; queue_name: string });
  return {
    name: 'Postfix',
    version: `${version} (Debian package ${debian}, installed with apt)`,
    hostname,
    port,
    queueIdOf: (reply) => /queued as ([0-9A-Za-z]+)/.exec(reply)?.[1],
    events,
    async retry(queueId) {
      // The smtp process logs the deferral before the queue manager files the message in
      // the deferred queue, and a flush only looks there: wait until it has been filed.
      await until(`Postfix to file ${queueId} in its deferred queue`, 10_000, async () => (await queue()).some((m) => m.queue_id === queueId && m.queue_name === 'deferred'));
      await check('postqueue', ['-c', config, '-f']);
    },
    queued: async () => (await queue()).length,
    purge: async () => void (await check('postsuper', ['-c', config, '-d', 'ALL'])),
    log,
    async stop() {
      // The master daemon puts itself in a session of its own, out of reach of the process
      // group we started: `postfix stop` is what ends it, and then the start-fg command.
      await run('postfix', ['-c', config, 'stop']);
      await stop(daemon.child);
      // The pid file outlives the master; only a process of this instance is ended.
      const master = readIfThere(path.join(dir, 'spool/pid/master.pid')).trim();
      if (master && readIfThere(`/proc/${master}/environ`).split('\0').includes(`MAIL_CONFIG=${config}`)) process.kill(Number(master), 'SIGKILL');
    },
  };
}

/**
 * Exim from Debian's exim4-daemon-light, unpacked (not installed) in `root`: the daemon
 * (`-bdf`, in the foreground) with a configuration of our own (-C), its spool and logs in
 * DIR. The transport is a plain `driver = smtp` with the relay's port: no
 * hosts_avoid_pipelining or any other setting for the relay.
 */
export async function startExim(root: string, dir: string, port: number, relay: { host: string; port: number }): Promise<InternalServer> {
  const exim = path.join(root, 'usr/sbin/exim4');
  const conf = path.join(dir, 'exim.conf');
  const spool = path.join(dir, 'spool');
  const logs = path.join(dir, 'log');
  const hostname = `exim.${DOMAIN}`;
  // Exim drops root for receiving and delivering: its user must reach the spool and logs.
  const uid = Number((await check('id', ['-u', 'Debian-exim'])).trim());
  const gid = Number((await check('id', ['-g', 'Debian-exim'])).trim());
  for (const sub of [spool, logs]) {
    mkdirSync(sub);
    chownSync(sub, uid, gid);
  }
  writeFileSync(
    conf,
    [
      `primary_hostname = ${hostname}`,
      `qualify_domain = ${DOMAIN}`,
      // Exim re-executes itself for deliveries; by default from its installed path.
      `exim_path = ${exim}`,
      `spool_directory = ${spool}`,
      `log_file_path = ${logs}/%slog`,
      `pid_file_path = ${dir}/exim.pid`,
      'local_interfaces = <; 127.0.0.1',
      `daemon_smtp_ports = ${port}`,
      'keep_environment =',
      // Nobody here receives over TLS from it; without this it logs about a missing certificate.
      'tls_advertise_hosts =',
      'acl_smtp_rcpt = acl_check_rcpt',
      '',
      'begin acl',
      'acl_check_rcpt:',
      '  accept hosts = 127.0.0.0/8',
      '  deny   message = relay not permitted',
      '',
      'begin routers',
      'smarthost:',
      '  driver = manualroute',
      '  transport = remote_smtp',
      `  route_list = * ${relay.host}`,
      '  no_more',
      '',
      'begin transports',
      'remote_smtp:',
      '  driver = smtp',
      `  port = ${relay.port}`,
      '',
      'begin retry',
      // Debian's default retry rule.
      '*   *   F,2h,15m; G,16h,1h,1.5; F,4d,6h',
      '',
    ].join('\n'),
  );
  chmodSync(conf, 0o644);
  const version = /Exim version (\S+)/.exec(await check(exim, ['-C', conf, '--version']))?.[1] ?? 'unknown';
  const debian = readIfThere(path.join(root, 'VERSION')).trim();
  const mainlog = path.join(logs, 'mainlog');
  const log = (): string => readIfThere(mainlog) + readIfThere(path.join(logs, 'paniclog'));
  const daemon = spawnDaemon(exim, ['-C', conf, '-bdf']);
  await started('Exim', daemon, log, /daemon started/);

  const ids = async (): Promise<string[]> => [...(await check(exim, ['-C', conf, '-bp'])).matchAll(/^\s*\S+\s+\S+\s+(\S+-\S+-\S+)/gm)].map((m) => m[1]);
  return {
    name: 'Exim',
    version: `${version} (Debian package exim4-daemon-light ${debian}, unpacked with dpkg -x)`,
    hostname,
    port,
    queueIdOf: (reply) => /id=(\S+)/.exec(reply)?.[1],
    events() {
      const found: LogEvent[] = [];
      // => first address of a delivery, -> further addresses in the same one, == deferred, ** failed.
      for (const match of readIfThere(mainlog).matchAll(/^\S+ \S+ (\S+) (=>|->|==|\*\*) (\S+) (.*)$/gm)) {
        const status = match[2] === '==' ? 'deferred' : match[2] === '**' ? 'bounced' : 'delivered';
        found.push({ queueId: match[1], recipient: match[3], status, text: match[4] });
      }
      return found;
    },
    async retry(queueId) {
      // -M forces a delivery attempt past the retry times, like -qff for one message. While
      // the delivery process of the previous attempt still holds the message, it only logs
      // that the spool file is locked: then we ask again.
      await until(`Exim to retry ${queueId}`, 10_000, async () => {
        const before = readIfThere(mainlog).length;
        await check(exim, ['-C', conf, '-M', queueId], 60_000);
        return !readIfThere(mainlog).slice(before).includes(`Spool file for ${queueId} is locked`);
      });
    },
    queued: async () => Number((await check(exim, ['-C', conf, '-bpc'])).trim()),
    async purge() {
      const queued = await ids();
      if (queued.length) await check(exim, ['-C', conf, '-Mrm', ...queued]);
    },
    log,
    stop: () => stop(daemon.child),
  };
}
