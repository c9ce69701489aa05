import cluster from 'node:cluster';
import { RateLimiterCluster } from 'rate-limiter-flexible';
import type { SessionSlot, Shaper, ShapingLimits } from '../delivery/index.ts';
import type { HoldsControl } from '../control/index.ts';
import type { FlushCount } from '../dns/index.ts';
import type { Slots } from '../inbound/index.ts';
import { localMetrics, type Readiness } from '../observability/index.ts';
import type { Outcome } from '../smtp/index.ts';
import type { LocalState } from '../relay.ts';
import { Channel } from './channel.ts';

/** What a worker answers its supervisor. */
export interface WorkerServices {
  readiness(): Readiness;
  flushDns(): Promise<FlushCount>;
  /** The abuse guard's holds: every worker shares them through the store, but one held only in a worker's memory (no state file) is its own. */
  abuse: HoldsControl;
  /** Runs doctor's checks and logs them: the supervisor asks one worker, so they run once. */
  doctor(): Promise<void>;
  /** Reads the configuration file again and applies it (it logs what it did). */
  reload(): void;
}

/** Only what shaping reads crosses the channel (a provider's matching patterns do not). */
function limits(provider: ShapingLimits): ShapingLimits {
  return { name: provider.name, maxSessions: provider.maxSessions, messagesPerMinute: provider.messagesPerMinute, backoff: provider.backoff };
}

/** Shaping as the supervisor keeps it for every worker (no `delivery.redis`). */
class SupervisedShaper implements Shaper {
  #channel: Channel;

  constructor(channel: Channel) {
    this.#channel = channel;
  }

  admitMessage(provider: ShapingLimits, egressIp: string): Promise<Outcome | undefined> {
    return this.#channel.call('shaping.admitMessage', limits(provider), egressIp);
  }

  async trySession(provider: ShapingLimits, egressIp: string): Promise<SessionSlot | { refused: Outcome; paused: boolean }> {
    const granted = await this.#channel.call<{ slot: string } | { refused: Outcome; paused: boolean }>('shaping.trySession', limits(provider), egressIp);
    if ('refused' in granted) return granted;
    return { release: () => this.#channel.notify('shaping.release', granted.slot) };
  }

  // Told, not asked: like ShapingState's, these never fail, and the channel's order has the
  // supervisor record them before it answers this worker's next admitMessage or trySession.
  async refund(provider: ShapingLimits, egressIp: string): Promise<void> {
    this.#channel.notify('shaping.refund', limits(provider), egressIp);
  }

  async throttled(provider: ShapingLimits, egressIp: string, reply: string): Promise<void> {
    this.#channel.notify('shaping.throttled', limits(provider), egressIp, reply);
  }

  async delivered(provider: ShapingLimits, egressIp: string): Promise<void> {
    this.#channel.notify('shaping.delivered', limits(provider), egressIp);
  }

  // Nothing of its own to stop: the state and its timers are the supervisor's.
  close(): void {}
}

/** A listener's connection slots, the supervisor's for every worker. */
class SupervisedSlots implements Slots {
  #channel: Channel;
  #index: number;

  constructor(channel: Channel, index: number) {
    this.#channel = channel;
    this.#index = index;
  }

  admit(session: string, address: string, trusted: boolean): Promise<Outcome | undefined> {
    return this.#channel.call('slots.admit', this.#index, session, address, trusted);
  }

  promote(session: string): void {
    this.#channel.notify('slots.promote', this.#index, session);
  }

  release(session: string): void {
    this.#channel.notify('slots.release', this.#index, session);
  }
}

/** This process as one worker of a supervisor: its channel, and the shared state through it. */
export class WorkerLink {
  /** Cluster's id for this worker: each fork, a restart included, gets the next. */
  readonly id: number;
  readonly state: LocalState;
  #channel: Channel;

  constructor(id: number) {
    this.id = id;
    this.#channel = new Channel({ send: (message, callback) => process.send!(message, undefined, undefined, callback) });
    process.on('message', (message) => this.#channel.receive(message));
    const channel = this.#channel;
    this.state = {
      slots: (index) => new SupervisedSlots(channel, index),
      shaper: () => new SupervisedShaper(channel),
      // The cluster limiter's master is in the supervisor; one limiter per keyPrefix, as it requires.
      limiter: (options) => new RateLimiterCluster(options),
    };
    // Read by the supervisor's /metrics, through prom-client's aggregation.
    this.#channel.handle({ metrics: () => localMetrics() });
  }

  /** Answers the supervisor's calls from now on, and tells it this worker listens on `ports`. */
  started(ports: number[], services: WorkerServices): void {
    this.#channel.handle({
      readiness: () => services.readiness(),
      'dns flush': () => services.flushDns(),
      'abuse holds': () => services.abuse.holds(),
      'abuse release': (who: string) => services.abuse.release(who),
      doctor: () => services.doctor(),
      reload: () => services.reload(),
    });
    this.#channel.notify('started', ports);
  }
}

/** This process's link to its supervisor when it is a worker (forked by supervise()); undefined otherwise. */
export function joinSupervisor(): WorkerLink | undefined {
  return cluster.isWorker ? new WorkerLink(cluster.worker!.id) : undefined;
}
