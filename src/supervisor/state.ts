import { RateLimiterClusterMaster } from 'rate-limiter-flexible';
import type { Config } from '../config/index.ts';
import { ShapingState, type SessionSlot, type ShapingLimits } from '../delivery/index.ts';
import { ConnectionSlots } from '../inbound/index.ts';
import type { Logger } from '../observability/index.ts';
import type { Handlers } from './channel.ts';

/** What one worker holds here: freed all at once when it dies, so a crash leaks no slot. */
interface Held {
  /** Connection slots by listener index, session ids as the worker knows them. */
  sessions: Set<string>[];
  /** Upstream session slots by the id the worker was given. */
  upstream: Map<string, SessionSlot>;
}

/**
 * The supervisor's one copy of the state the workers must share when Redis does not hold it,
 * answering them over IPC: each listener's connection slots (the same ConnectionSlots a
 * single process uses), shaping's session slots, pauses and rates (a ShapingState without
 * Redis; none when `delivery.redis` is set, the workers then share Redis), and the AUTH
 * failure counts (rate-limiter-flexible's RateLimiterClusterMaster answers the workers'
 * RateLimiterCluster on the same channel).
 */
export class SharedState {
  #slots: ConnectionSlots[];
  #shaper: ShapingState | undefined;
  #held = new Map<number, Held>();
  #nextSlot = 0;

  constructor(config: Config, logger: Logger) {
    this.#slots = config.listeners.map(() => new ConnectionSlots(config.limits));
    this.#shaper = config.delivery.redis ? undefined : new ShapingState({ logger });
    // Listens on cluster's 'message' for every worker's limiters; one per process.
    new RateLimiterClusterMaster();
  }

  /** The calls a worker makes; `worker` is its cluster id. */
  handlers(worker: number): Handlers {
    const held: Held = { sessions: this.#slots.map(() => new Set()), upstream: new Map() };
    this.#held.set(worker, held);
    // Session ids are the worker's smtp-server's: unique in that worker only.
    const key = (session: string) => `${worker}:${session}`;
    const shaper = () => {
      if (!this.#shaper) throw new Error('shaping is shared through delivery.redis, not the supervisor');
      return this.#shaper;
    };
    return {
      'slots.admit': (index: number, session: string, address: string, trusted: boolean) => {
        const refused = this.#slots[index].admit(key(session), address, trusted);
        if (!refused) held.sessions[index].add(session);
        return refused;
      },
      'slots.promote': (index: number, session: string) => this.#slots[index].promote(key(session)),
      'slots.release': (index: number, session: string) => {
        held.sessions[index].delete(session);
        this.#slots[index].release(key(session));
      },
      'shaping.admitMessage': (provider: ShapingLimits, egressIp: string) => shaper().admitMessage(provider, egressIp),
      'shaping.trySession': async (provider: ShapingLimits, egressIp: string) => {
        const granted = await shaper().trySession(provider, egressIp);
        if ('refused' in granted) return granted;
        const id = String(++this.#nextSlot);
        held.upstream.set(id, granted);
        return { slot: id };
      },
      'shaping.release': (id: string) => {
        held.upstream.get(id)?.release();
        held.upstream.delete(id);
      },
      'shaping.refund': (provider: ShapingLimits, egressIp: string) => shaper().refund(provider, egressIp),
      'shaping.throttled': (provider: ShapingLimits, egressIp: string, reply: string) => shaper().throttled(provider, egressIp, reply),
      'shaping.delivered': (provider: ShapingLimits, egressIp: string) => shaper().delivered(provider, egressIp),
    };
  }

  /** The worker is gone, and with it its connections and upstream sessions: their slots are free. */
  release(worker: number): void {
    const held = this.#held.get(worker);
    if (!held) return;
    this.#held.delete(worker);
    held.sessions.forEach((sessions, index) => {
      for (const session of sessions) this.#slots[index].release(`${worker}:${session}`);
    });
    for (const slot of held.upstream.values()) slot.release();
  }

  close(): void {
    this.#shaper?.close();
  }
}
