import { setTimeout as delay } from 'node:timers/promises';
import type { ConnectionOptions } from 'node:tls';
import type { Config } from '../config/index.ts';
import type { Resolve } from '../dns/index.ts';
import type { Egress } from '../identity/index.ts';
import { Counter, Gauge, Histogram, METRIC_PREFIX, SECONDS_BUCKETS } from '../observability/index.ts';
import { formatReply, saidOf, type Outcome, type Reply } from '../smtp/index.ts';
import type { MessageSource } from '../upstream/index.ts';
import { connectDestination, type Connected } from './connect.ts';
import type { Destination } from './destination.ts';
import type { Playbook } from './playbook.ts';
import type { ProviderConfig } from './providers.ts';
import type { SessionSlot, Shaper } from './shaping.ts';

/** Every upstream session of the process that is open (leased or idle), and when it opened. */
const live = new Map<Connected, number>();

new Gauge({
  name: `${METRIC_PREFIX}upstream_sessions`,
  help: 'Upstream SMTP sessions open now, carrying a transaction or idle in the pool',
  collect() {
    this.set(live.size);
  },
});
const opened = new Counter({
  name: `${METRIC_PREFIX}upstream_sessions_opened_total`,
  help: 'Upstream SMTP sessions opened, by TLS state: verified (certificate valid for the MX name), unverified (encrypted only), none (plaintext)',
  labelNames: ['tls'],
});
const reuses = new Counter({
  name: `${METRIC_PREFIX}upstream_sessions_reused_total`,
  help: 'Transactions carried by an idle upstream session instead of a new one',
});
const sessionSeconds = new Histogram({
  name: `${METRIC_PREFIX}upstream_session_seconds`,
  help: 'How long upstream sessions stayed open, from connecting to QUIT or loss',
  buckets: SECONDS_BUCKETS,
});

/**
 * A session idle for less than this is reused as it is when its last transaction ended with
 * the message accepted or an RSET, which leaves it ready for the next (RFC 5321 §4.1.1.4,
 * §4.1.1.5). A peer that closed it in the meantime has usually been seen doing so; when not,
 * the first command finds it lost and the leg takes a fresh session (proxy/leg.ts). Past it, an RSET checks it first: a socket dropped silently while idle
 * would otherwise hold the client for a whole command timeout.
 */
const TRUSTED_IDLE_MS = 2000;

/** How long an idle session may take to answer the RSET that checks it before reuse. */
const HEALTH_CHECK_MS = 10_000;

/**
 * One transaction's use of an upstream session. Its commands go through the lease, which
 * hears every reply: a reply the playbook reads as "slow down" pauses the provider (and the
 * session carries nothing more), and a message accepted at DATA counts towards the
 * provider's ramp. The greeting is heard the same way when the session opens.
 */
export interface UpstreamLease {
  connected: Connected;
  provider: ProviderConfig | undefined;
  /** True when the session had carried an earlier transaction. */
  reused: boolean;
  /** The destination told this session to slow down (and the provider is paused). */
  readonly throttled: boolean;
  mailFrom(sender: string, params: Record<string, string>): Promise<Reply>;
  rcptTo(address: string): Promise<Reply>;
  /** MAIL FROM and the first RCPT TO in one round trip, where the destination offers PIPELINING; else one after the other. */
  mailAndRcpt(sender: string, params: Record<string, string>, address: string): Promise<{ mail: Reply; rcpt?: Reply }>;
  data(message: MessageSource): Promise<Reply>;
  rset(): Promise<Reply>;
  /**
   * The transaction is done with the session: kept for the next one when `reusable` (it
   * ended cleanly), ended with QUIT otherwise.
   */
  finish(reusable: boolean): Promise<void>;
}

/** Who a session's replies are heard for: its provider (none when unknown or shaping is off), by which playbook, from which egress. */
interface Shaping {
  provider: ProviderConfig | undefined;
  playbook: Playbook;
  egressIp: string;
}

interface Idle {
  connected: Connected;
  slot: SessionSlot | undefined;
  /** `provider:egress` when the session holds a provider's slot. */
  shapingKey: string | undefined;
  timer: NodeJS.Timeout;
  /** When it went idle. */
  since: number;
  /** Its last transaction ended with the DATA reply or an RSET: nothing of it is left open. */
  atBoundary: boolean;
}

/**
 * Upstream sessions for transactions (DESIGN §5): a session that ended its transaction
 * cleanly waits, idle, for the next transaction to the same destination from the same egress
 * (for `pool.idleTimeout`, at most `pool.maxIdle` of them), and is reset with RSET before it
 * carries anything. The destination key includes its TLS policy, so a session never carries
 * mail for a domain whose policy asks more than the one it was opened under.
 * New sessions to a known provider need a slot from the shaper first.
 */
export class UpstreamPool {
  #idle = new Map<string, Idle[]>();
  #shaper: Shaper;
  #resolve: Resolve;
  #tls: ConnectionOptions | undefined;
  #closed = false;
  /** Transactions waiting for a session to go idle or a slot to free. */
  #waiting = new Set<() => void>();

  constructor(options: { shaper: Shaper; resolve: Resolve; tls?: ConnectionOptions }) {
    this.#shaper = options.shaper;
    this.#resolve = options.resolve;
    this.#tls = options.tls;
  }

  /** `playbook`: the running one, whose provider registry shaping uses and whose rows say when to pause. */
  async open(destination: Destination, egress: Egress, { delivery, playbook }: { delivery: Config['delivery']; playbook: Playbook }): Promise<UpstreamLease | Outcome> {
    const provider = delivery.shaping ? playbook.providers.of(destination.hops.map((hop) => hop.name)) : undefined;
    if (provider) {
      const refused = await this.#shaper.admitMessage(provider, egress.ip);
      if (refused) return refused;
    }
    const key = `${destination.key}|${egress.ip}|${egress.helo}`;
    const shapingKey = provider && `${provider.name}:${egress.ip}`;
    // Every slot taken: one frees whenever a transaction ends, so wait for that a while
    // (as long as connecting may take), polling for slots other replicas free.
    const deadline = Date.now() + delivery.connectTimeout;
    let slot: SessionSlot | undefined;
    for (let pollMs = 25; ; pollMs = Math.min(pollMs * 2, 500)) {
      const idle = await this.#checkout(key);
      if (idle) {
        reuses.inc();
        return this.#lease(key, idle.connected, { slot: idle.slot, shapingKey }, { provider, playbook, egressIp: egress.ip }, true, delivery);
      }
      if (!provider) break;
      const granted = await this.#shaper.trySession(provider, egress.ip);
      if ('release' in granted) {
        slot = granted;
        break;
      }
      // A session idle towards another destination of the same provider holds a slot we can use.
      if (!granted.paused && (await this.#closeIdleOf(shapingKey!))) continue;
      const left = deadline - Date.now();
      if (granted.paused || left <= 0) {
        await this.#shaper.refund(provider, egress.ip);
        return granted.refused;
      }
      await this.#released(Math.min(pollMs, left));
    }
    const connected = await connectDestination(destination, egress, { delivery, resolve: this.#resolve, tls: this.#tls });
    if ('kind' in connected) {
      this.#free(slot);
      if (provider) {
        await this.#shaper.refund(provider, egress.ip);
        // A throttling reply at the greeting (Yahoo's [TSS04]) pauses the provider like one at RCPT.
        const said = saidOf(connected);
        if (said) await this.#hear(said.reply, said.mxHost, { provider, playbook, egressIp: egress.ip });
      }
      return connected;
    }
    live.set(connected, Date.now());
    const tls = connected.session.tls;
    opened.inc({ tls: tls ? (tls.authorized ? 'verified' : 'unverified') : 'none' });
    return this.#lease(key, connected, { slot, shapingKey }, { provider, playbook, egressIp: egress.ip }, false, delivery);
  }

  /**
   * A reply the playbook reads as "slow down" pauses the provider from this egress: the
   * promise settles once the pause is recorded; undefined for any other reply.
   */
  #hear(reply: Reply, mxHost: string, { provider, playbook, egressIp }: Shaping): Promise<void> | undefined {
    if (!provider || !playbook.classify(reply, { mxHost })?.pause) return undefined;
    return this.throttled(provider, egressIp, formatReply(reply));
  }

  /** The provider said to slow down: pause it, and close its idle sessions from that egress. */
  async throttled(provider: ProviderConfig, egressIp: string, reply: string): Promise<void> {
    await this.#shaper.throttled(provider, egressIp, reply);
    while (await this.#closeIdleOf(`${provider.name}:${egressIp}`));
  }

  /** Ends every idle session (shutdown). */
  async close(): Promise<void> {
    this.#closed = true;
    const all = [...this.#idle.values()].flat();
    this.#idle.clear();
    await Promise.all(all.map((idle) => this.#end(idle.connected, idle.slot, idle.timer)));
  }

  #lease(
    key: string,
    connected: Connected,
    { slot, shapingKey }: { slot: SessionSlot | undefined; shapingKey: string | undefined },
    shaping: Shaping,
    reused: boolean,
    delivery: Config['delivery'],
  ): UpstreamLease {
    let finished = false;
    let throttled = false;
    // Whether the session is between transactions: after MAIL FROM it is not, until the DATA reply or an RSET.
    let atBoundary = true;
    const { session, mxHost } = connected;
    const { provider, egressIp } = shaping;
    const hear = (reply: Reply): Reply => {
      // The session carries nothing more from now on; the pause needs no waiting for.
      const pausing = this.#hear(reply, mxHost, shaping);
      if (pausing) {
        throttled = true;
        void pausing;
      }
      return reply;
    };
    return {
      connected,
      provider,
      reused,
      get throttled() {
        return throttled;
      },
      mailFrom: async (sender, params) => {
        atBoundary = false;
        return hear(await session.mailFrom(sender, params));
      },
      rcptTo: async (address) => hear(await session.rcptTo(address)),
      mailAndRcpt: async (sender, params, address) => {
        atBoundary = false;
        if (!session.extensions.has('PIPELINING')) {
          const mail = hear(await session.mailFrom(sender, params));
          return mail.code >= 200 && mail.code < 300 ? { mail, rcpt: hear(await session.rcptTo(address)) } : { mail };
        }
        const [mail, rcpt] = await session.mailAndRcpt(sender, params, address);
        hear(mail);
        // RFC 2920 §3.2: the RCPT's reply after a refused MAIL (503) answers nothing the client asked.
        return mail.code >= 200 && mail.code < 300 ? { mail, rcpt: hear(rcpt) } : { mail };
      },
      data: async (message) => {
        const reply = hear(await session.data(message));
        // A refusal may be of the DATA command itself, which leaves the transaction open (RFC 5321 §3.3).
        atBoundary = reply.code >= 200 && reply.code < 300;
        if (provider && reply.code >= 200 && reply.code < 300) void this.#shaper.delivered(provider, egressIp);
        return reply;
      },
      rset: async () => {
        const reply = await session.rset();
        atBoundary = true;
        return reply;
      },
      finish: async (reusable) => {
        if (finished) return;
        finished = true;
        const idle = this.#idle.get(key) ?? [];
        if (!reusable || throttled || this.#closed || connected.session.closed || idle.length >= delivery.pool.maxIdle || delivery.pool.idleTimeout === 0) {
          return this.#end(connected, slot);
        }
        const entry: Idle = {
          connected,
          slot,
          shapingKey,
          since: Date.now(),
          atBoundary,
          timer: setTimeout(() => {
            this.#remove(key, entry);
            void this.#end(connected, slot);
          }, delivery.pool.idleTimeout).unref(),
        };
        idle.push(entry);
        this.#idle.set(key, idle);
        this.#wake();
      },
    };
  }

  /** The most recently used idle session that is still open (and answers RSET when idle a while); dead ones are dropped. */
  async #checkout(key: string): Promise<Idle | undefined> {
    for (let idle = this.#idle.get(key)?.pop(); idle; idle = this.#idle.get(key)?.pop()) {
      clearTimeout(idle.timer);
      if (!idle.connected.session.closed) {
        if (idle.atBoundary && Date.now() - idle.since < TRUSTED_IDLE_MS) return idle;
        try {
          // A socket dropped silently while idle would hold the client for the whole command timeout.
          const reply = await Promise.race([idle.connected.session.rset(), delay(HEALTH_CHECK_MS, undefined, { ref: false })]);
          if (reply?.code === 250) return idle;
        } catch {
          // Gone while idle (the server's own idle timeout): the next one, or a fresh session.
        }
      }
      await this.#end(idle.connected, idle.slot);
    }
    return undefined;
  }

  /** Ends one idle session holding a slot of `shapingKey`; false when there is none. */
  async #closeIdleOf(shapingKey: string): Promise<boolean> {
    for (const [key, idle] of this.#idle) {
      const entry = idle.find((candidate) => candidate.shapingKey === shapingKey);
      if (entry) {
        this.#remove(key, entry);
        await this.#end(entry.connected, entry.slot, entry.timer);
        return true;
      }
    }
    return false;
  }

  #released(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.#waiting.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.#waiting.add(wake);
    });
  }

  #wake(): void {
    for (const wake of this.#waiting) wake();
  }

  #free(slot: SessionSlot | undefined): void {
    if (!slot) return;
    slot.release();
    this.#wake();
  }

  #remove(key: string, entry: Idle): void {
    const idle = this.#idle.get(key);
    const at = idle?.indexOf(entry) ?? -1;
    if (idle && at >= 0) idle.splice(at, 1);
  }

  async #end(connected: Connected, slot: SessionSlot | undefined, timer?: NodeJS.Timeout): Promise<void> {
    if (timer) clearTimeout(timer);
    this.#free(slot);
    const since = live.get(connected);
    if (since !== undefined) {
      live.delete(connected);
      sessionSeconds.observe((Date.now() - since) / 1000);
    }
    if (!connected.session.closed) await connected.session.quit().catch(() => {});
  }
}
