import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { RawClient, type ClientReply } from './client.ts';
import type { DestinationScript, ReceivedMessage } from './destination.ts';
import { RelayProcess } from './process.ts';
import { RedisServer } from './redis.ts';
import { CORP, freePort, Internet, type DestinationSpec } from './world.ts';

/**
 * Issue 14, part 6: the soak. Internal servers that retry like an MTA send N messages through
 * relay processes while both destinations inject faults and the relays and Redis are
 * restarted; at the end every recipient's copies and status notifications are counted
 * against what the clients were told (`check`).
 */
/** The soak's clients send thousands of messages a minute as a few senders: the outbound abuse guard would (rightly) stop them. */
const NONE = { perMinute: false, perHour: false, perDay: false, messages: { perMinute: false, perHour: false, perDay: false } };
const UNLIMITED = { limits: NONE, addressLimits: NONE, anomaly: false };

export interface SoakOptions {
  messages: number;
  /** Internal servers sending at once, each one message at a time. */
  clients: number;
  /** Relay processes sharing the Redis memo; each attempt goes to one of them at random (a TCP load balancer). */
  relays: number;
  relayRestarts: number;
  redisRestarts: number;
  /** Attempts per message before the client stops retrying (it would keep it queued; the soak reports it). */
  retryCap: number;
  /** Per event at each of the two destinations: the chance of that fault. */
  faults: { greeting421: number; resetAtRcpt: number; resetMidData: number; data451: number };
  seed: number;
  /** Progress lines (restarts); the driver is quiet without it. */
  log?: (line: string) => void;
}

export const SHORT: SoakOptions = {
  messages: 60,
  clients: 4,
  relays: 2,
  relayRestarts: 1,
  redisRestarts: 1,
  retryCap: 15,
  faults: { greeting421: 0.03, resetAtRcpt: 0.03, resetMidData: 0.03, data451: 0.1 },
  seed: 1,
};

const ONE: DestinationSpec = { domain: 'one.test', mx: [{ name: 'mx.one.test', ip: '127.0.0.20' }] };
const TWO: DestinationSpec = { domain: 'two.test', mx: [{ name: 'mx.two.test', ip: '127.0.0.21' }] };
const SENDER = 'alice@example.test';

/** What a client finally knows about one recipient. */
type Final = 'delivered' | 'refused' | 'pending';

interface Sent {
  id: string;
  bytes: string;
  recipients: string[];
  /** Where the destination refuses the message at DATA for good (content), if anywhere. */
  rejectedBy?: string;
  final: Map<string, Final>;
  /** The last reply each recipient's client heard about it (or why none came), for a failed run. */
  told: Map<string, string>;
  attempts: number;
}

export interface Violation {
  messageId: string;
  recipient: string;
  final: Final | 'never sent';
  told?: string;
  copies: number;
  notifications: number;
}

export interface SoakReport {
  messages: number;
  recipients: number;
  attempts: number;
  /** Recipients by what their client was finally told. */
  finals: Record<Final, number>;
  /** Recipients the relay reported to the sender (RFC 3464) while the client heard 250. */
  notified: number;
  faults: Record<keyof SoakOptions['faults'], number> & { data554: number; rcpt550: number };
  restarts: { relay: number; redis: number };
  /** A copy or notification more than one per recipient. */
  duplicates: Violation[];
  /** Told delivered (250), yet neither a copy nor a notification arrived. */
  losses: Violation[];
  /** Told refused (5xx), yet it arrived or was also reported. */
  refusedButArrived: Violation[];
  /** Arrived for a message or recipient no client sent. */
  strays: Violation[];
  /** Still 4xx at the retry cap: neither lost nor duplicated unless listed above. */
  pending: Violation[];
  /**
   * For a failed run: the relays' transaction records of every message listed above, and
   * every warning or error they logged, each with the relay's index, in the order written.
   */
  evidence: Record<string, unknown>[];
  /** Relay exits other than 0 after SIGTERM (a drain that failed). */
  relayExits: (number | null)[];
  durationMs: number;
  machine: string;
  seed: number;
}

/** mulberry32: a seeded PRNG, so a run's messages and faults can be told from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function compose(n: number, run: string, random: () => number): Sent {
  const id = `<soak-${n}.${run}@example.test>`;
  const recipients = Array.from({ length: 1 + Math.floor(random() * 3) }, (_, k) => {
    // One in ten does not exist: the destination refuses it at RCPT TO for good (550 5.1.1).
    const local = random() < 0.1 ? `nobody.${k}.m${n}` : `r${k}.m${n}`;
    return `${local}@${random() < 0.5 ? ONE.domain : TWO.domain}`;
  });
  // One in ten is refused for good at DATA by two.test: the relay bounces it when one.test has it.
  const rejectedBy = random() < 0.1 ? TWO.domain : undefined;
  const headers = [
    `From: Alice <${SENDER}>`,
    `To: ${recipients.map((r) => `<${r}>`).join(', ')}`,
    `Subject: soak ${n}`,
    'Date: Mon, 23 Nov 2026 09:00:00 +0000',
    `Message-ID: ${id}`,
    ...(rejectedBy ? [`X-Soak-Reject: ${rejectedBy}`] : []),
  ];
  const body = Array.from({ length: 1 + Math.floor(random() * 40) }, (_, i) => `line ${i} of message ${n}`).join('\r\n');
  return { id, bytes: `${headers.join('\r\n')}\r\n\r\n${body}\r\n`, recipients, rejectedBy, final: new Map(recipients.map((r) => [r, 'pending'])), told: new Map(), attempts: 0 };
}

/**
 * One attempt as an MTA makes it, for the recipients still pending: a 5xx at RCPT or DATA is
 * final for those it names, 250 at DATA delivers those accepted at RCPT, and anything else (a
 * 4xx, the connection refused or lost) leaves them pending for the next attempt.
 */
async function attempt(port: number, message: Sent): Promise<void> {
  const pending = message.recipients.filter((r) => message.final.get(r) === 'pending');
  const hear = (recipients: string[], reply: ClientReply, stage: string) => {
    for (const r of recipients) {
      message.told.set(r, `${stage}: ${reply.lines.join(' | ')}`);
      if (reply.code >= 500) message.final.set(r, 'refused');
      else if (reply.code === 250 && stage === 'DATA') message.final.set(r, 'delivered');
    }
  };
  let client: RawClient | undefined;
  try {
    const connected = await RawClient.connect(port);
    client = connected.client;
    // A 5xx greeting would mean "no mail service here" (RFC 5321 §3.1); an MTA tries again later.
    if (connected.greeting.code !== 220) return void pending.forEach((r) => message.told.set(r, `greeting: ${connected.greeting.lines.join(' | ')}`));
    const ehlo = await client.command('EHLO corp-ex01.example.test');
    if (ehlo.code !== 250) return void pending.forEach((r) => message.told.set(r, `EHLO: ${ehlo.lines.join(' | ')}`));
    const mail = await client.command(`MAIL FROM:<${SENDER}>`);
    if (mail.code !== 250) return hear(pending, mail, 'MAIL FROM');
    const accepted: string[] = [];
    for (const recipient of pending) {
      const reply = await client.command(`RCPT TO:<${recipient}>`);
      if (reply.code === 250) accepted.push(recipient);
      else hear([recipient], reply, 'RCPT TO');
    }
    if (accepted.length === 0) return;
    const { intermediate, final } = await client.data(message.bytes);
    hear(accepted, final ?? intermediate, 'DATA');
  } catch (err) {
    // The connection was refused or lost: what was in flight stays pending, as for an MTA.
    for (const r of pending) if (message.final.get(r) === 'pending') message.told.set(r, `connection: ${(err as Error).message}`);
  } finally {
    await client?.quit().catch(() => undefined);
  }
}

/** The soak's Message-ID in a copy or in a notification's returned header section. */
function messageIdOf(bytes: Buffer): string | undefined {
  return /<soak-[^>]+>/.exec(bytes.toString('latin1'))?.[0];
}

/** Recipients a status notification (RFC 3464 §2.3.2 Final-Recipient) reports. */
function reported(notification: ReceivedMessage): string[] {
  return [...notification.message.toString('latin1').matchAll(/^Final-Recipient: rfc822; ?(\S+)\r?$/gim)].map((m) => m[1]);
}

/**
 * The invariant, per message and recipient, counting the copies its destination received and
 * the status notifications that reported it to the sender:
 * - told delivered (250 to a transaction that had it): copies + notifications = 1;
 * - told refused (5xx at RCPT, or at DATA, which the relay says only when no destination
 *   took it and none had it before): copies + notifications = 0, the client bounces it itself;
 * - still pending at the retry cap: copies + notifications ≤ 1;
 * and nothing arrives for a message or recipient that no client sent.
 */
export function check(sent: Sent[], copies: ReceivedMessage[], notifications: ReceivedMessage[]) {
  const key = (id: string, r: string) => `${id} ${r}`;
  const counts = new Map<string, { copies: number; notifications: number }>();
  const count = (id: string | undefined, recipient: string, field: 'copies' | 'notifications') => {
    const k = key(id ?? '(no soak Message-ID)', recipient);
    const c = counts.get(k) ?? { copies: 0, notifications: 0 };
    c[field] += 1;
    counts.set(k, c);
  };
  for (const copy of copies) for (const r of copy.envelope.rcptTo) count(messageIdOf(copy.message), r, 'copies');
  for (const n of notifications) for (const r of reported(n)) count(messageIdOf(n.message), r, 'notifications');

  const result = { duplicates: [] as Violation[], losses: [] as Violation[], refusedButArrived: [] as Violation[], strays: [] as Violation[], pending: [] as Violation[], notified: 0 };
  const known = new Set<string>();
  for (const message of sent) {
    for (const [recipient, final] of message.final) {
      const k = key(message.id, recipient);
      known.add(k);
      const c = counts.get(k) ?? { copies: 0, notifications: 0 };
      const v: Violation = { messageId: message.id, recipient, final, told: message.told.get(recipient), ...c };
      const arrived = c.copies + c.notifications;
      if (arrived > 1) result.duplicates.push(v);
      if (final === 'delivered' && arrived === 0) result.losses.push(v);
      if (final === 'refused' && arrived > 0) result.refusedButArrived.push(v);
      if (final === 'pending') result.pending.push(v);
      if (final === 'delivered' && c.notifications > 0) result.notified += 1;
    }
  }
  for (const [k, c] of counts) {
    if (known.has(k)) continue;
    const [messageId, recipient] = k.split(' ');
    result.strays.push({ messageId, recipient, final: 'never sent', ...c });
  }
  return result;
}

export async function soak(options: SoakOptions): Promise<SoakReport> {
  const log = options.log ?? (() => undefined);
  const random = prng(options.seed);
  const run = Date.now().toString(36);
  const faults = { greeting421: 0, resetAtRcpt: 0, resetMidData: 0, data451: 0, data554: 0, rcpt550: 0 };
  const chance = (fault: keyof SoakOptions['faults']) => {
    const hit = random() < options.faults[fault];
    if (hit) faults[fault] += 1;
    return hit;
  };
  // Faults first, then the destination's own refusals: a message refused for good can meet a
  // 451 first, so a retry sees it refused after the other destination took it (the memo's case).
  const script = (domain: string): DestinationScript => ({
    connect: () => (chance('greeting421') ? { code: 421, message: '4.3.2 Too busy, try again later' } : undefined),
    dropAtRcpt: () => chance('resetAtRcpt'),
    rcptTo: (address) => {
      if (!address.startsWith('nobody.')) return undefined;
      faults.rcpt550 += 1;
      return { code: 550, message: '5.1.1 The email account that you tried to reach does not exist' };
    },
    dropMidData: () => chance('resetMidData'),
    data: (message) => {
      if (chance('data451')) return { code: 451, message: '4.3.0 Temporary failure, try again' };
      if (!message.toString('latin1').includes(`\r\nX-Soak-Reject: ${domain}\r\n`)) return undefined;
      faults.data554 += 1;
      return { code: 554, message: '5.7.1 Message content refused' };
    },
  });

  const started = Date.now();
  const internet = await Internet.start({ destinations: [{ ...ONE, script: script(ONE.domain) }, { ...TWO, script: script(TWO.domain) }, CORP], verify: false });
  const dir = mkdtempSync(path.join(os.tmpdir(), 'soak-'));
  let redis = await RedisServer.persistent(dir);
  const redisPort = redis.port;
  // Fixed ports: a restarted relay listens where its clients (and the load balancer) expect it.
  const ports = await Promise.all(Array.from({ length: options.relays }, () => freePort()));
  const config = (port: number) =>
    internet.relayConfig({ listeners: [{ host: '127.0.0.1', port }], memo: { redis: redis.url }, control: { socket: null }, http: null, abuse: UNLIMITED });
  const startRelay = (i: number) => RelayProcess.start(path.join(dir, `relay-${i}.yaml`), config(ports[i]));
  const relays = await Promise.all(ports.map((_, i) => startRelay(i)));
  // Every process started, restarted ones included, for the evidence of a failed run.
  const processes: { index: number; relay: RelayProcess }[] = relays.map((relay, index) => ({ index, relay }));
  const relayExits: (number | null)[] = [];
  const restarts = { relay: 0, redis: 0 };

  const sent = Array.from({ length: options.messages }, (_, n) => compose(n, run, random));
  let done = 0;
  let progressed: () => void = () => undefined;
  const progress = () => new Promise<void>((resolve) => (progressed = resolve));

  // The restarts, spread over the run by messages finished: relay and Redis in turn.
  const events: ('relay' | 'redis')[] = [];
  for (let i = 0; i < Math.max(options.relayRestarts, options.redisRestarts); i++) {
    if (i < options.relayRestarts) events.push('relay');
    if (i < options.redisRestarts) events.push('redis');
  }
  const chaos = (async () => {
    for (const [i, event] of events.entries()) {
      const threshold = Math.floor((options.messages * (i + 1)) / (events.length + 1));
      while (done < threshold) await progress();
      if (event === 'relay') {
        const which = restarts.relay % relays.length;
        const exit = await relays[which].stop();
        if (exit !== 0) relayExits.push(exit);
        relays[which] = await startRelay(which);
        processes.push({ index: which, relay: relays[which] });
        restarts.relay += 1;
        log(`relay ${which} restarted (SIGTERM drain) after ${done} messages`);
      } else {
        await redis.kill();
        redis = await RedisServer.persistent(dir, redisPort);
        restarts.redis += 1;
        log(`redis killed and started again after ${done} messages`);
      }
    }
  })();

  let next = 0;
  let attempts = 0;
  const client = async () => {
    for (let n = next++; n < sent.length; n = next++) {
      const message = sent[n];
      while (message.attempts < options.retryCap && [...message.final.values()].includes('pending')) {
        // An MTA's backoff, shortened: 50 ms doubling to 1 s, with jitter so retries spread.
        if (message.attempts > 0) await delay(Math.min(50 * 2 ** (message.attempts - 1), 1000) * (0.5 + random()));
        message.attempts += 1;
        attempts += 1;
        await attempt(ports[Math.floor(random() * ports.length)], message);
      }
      done += 1;
      progressed();
    }
  };
  try {
    await Promise.all(Array.from({ length: options.clients }, client));
    // Events whose threshold the last messages never reached still run, so every run has them all.
    done = Infinity;
    progressed();
    await chaos;
    for (const relay of relays) {
      const exit = await relay.stop();
      if (exit !== 0) relayExits.push(exit);
    }
    const copies = [ONE, TWO].flatMap((d) => internet.destination(d.domain).received);
    const notifications = internet.destination(CORP.domain).received;
    const verdict = check(sent, copies, notifications);
    const failed = new Set([...verdict.duplicates, ...verdict.losses, ...verdict.refusedButArrived, ...verdict.strays].map((v) => v.messageId));
    const evidence = processes
      .flatMap(({ index, relay }) => relay.records.map((record): Record<string, unknown> => ({ relay: index, ...record })))
      .filter((r) => (r.msg === 'transaction' && failed.has(r.messageId as string)) || (failed.size > 0 && (['warn', 'error', 'fatal'].includes(r.level as string) || /^refused/.test(String(r.msg)))))
      // ISO times: in text order is in time order.
      .sort((a, b) => String(a.time).localeCompare(String(b.time)));
    const finals: Record<Final, number> = { delivered: 0, refused: 0, pending: 0 };
    for (const message of sent) for (const final of message.final.values()) finals[final] += 1;
    return {
      messages: sent.length,
      recipients: sent.reduce((sum, m) => sum + m.recipients.length, 0),
      attempts,
      finals,
      faults,
      restarts,
      ...verdict,
      evidence,
      relayExits,
      durationMs: Date.now() - started,
      machine: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'unknown CPU'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}`,
      seed: options.seed,
    };
  } finally {
    await Promise.all(relays.map((relay) => relay.kill()));
    await redis.kill();
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The figures of a run, as `npm run soak` prints them and the README quotes them. */
export function summary(report: SoakReport): string {
  const f = report.faults;
  return [
    `messages ${report.messages} (${report.recipients} recipients), attempts ${report.attempts}, seed ${report.seed}`,
    `recipients: delivered ${report.finals.delivered} (of which reported to the sender ${report.notified}), refused ${report.finals.refused}, still pending at the retry cap ${report.finals.pending}`,
    `faults injected: 421 at greeting ${f.greeting421}, reset at RCPT ${f.resetAtRcpt}, reset mid-DATA ${f.resetMidData}, 451 at DATA ${f.data451}; refusals for good: 550 at RCPT ${f.rcpt550}, 554 at DATA ${f.data554}`,
    `restarts: relay ${report.restarts.relay} (SIGTERM drain), Redis ${report.restarts.redis} (SIGKILL, AOF)`,
    `duplicates ${report.duplicates.length}, losses ${report.losses.length}, refused but arrived ${report.refusedButArrived.length}, strays ${report.strays.length}, relay exits ≠ 0: ${report.relayExits.length}`,
    `duration ${(report.durationMs / 1000).toFixed(1)} s on ${report.machine}`,
  ].join('\n');
}

if (import.meta.main) {
  const number = (name: string, fallback: number) => (process.env[name] === undefined ? fallback : Number(process.env[name]));
  const report = await soak({
    messages: number('SOAK_MESSAGES', 10000),
    clients: number('SOAK_CLIENTS', 16),
    relays: number('SOAK_RELAYS', 2),
    relayRestarts: number('SOAK_RELAY_RESTARTS', 10),
    redisRestarts: number('SOAK_REDIS_RESTARTS', 6),
    retryCap: number('SOAK_RETRY_CAP', SHORT.retryCap),
    faults: SHORT.faults,
    seed: number('SOAK_SEED', Date.now() % 2 ** 31),
    log: (line) => console.log(line),
  });
  console.log(summary(report));
  for (const [what, list] of Object.entries({ duplicates: report.duplicates, losses: report.losses, 'refused but arrived': report.refusedButArrived, strays: report.strays, pending: report.pending })) {
    if (list.length) console.log(`${what}:\n${list.map((v) => `  ${v.messageId} ${v.recipient} (${v.final}): ${v.copies} copies, ${v.notifications} notifications; told ${v.told ?? 'nothing'}`).join('\n')}`);
  }
  for (const record of report.evidence) console.log(JSON.stringify(record));
  const failed = report.duplicates.length + report.losses.length + report.refusedButArrived.length + report.strays.length + report.relayExits.length;
  process.exitCode = failed ? 1 : 0;
}
