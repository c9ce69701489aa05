import type { Config } from '../config/index.ts';
import { failure, type Outcome } from '../smtp/index.ts';

/**
 * Who holds a listener's connection slots (issue: strangers must not starve the relay's own
 * clients). Clients of the trusted networks, and clients that authenticated, share
 * `limits.maxClients`; everyone else (a stranger, until it authenticates) gets a small budget
 * of its own, in total and per address, so a flood of strangers can never take a slot an
 * internal server needs. smtp-server's own limit is the ceiling on file descriptors: both
 * budgets, plus room for connections in the 100 ms smtp-server waits before the greeting
 * (catching early talkers), when nobody knows yet whose they are.
 */
const AWAITING_GREETING = 1000;

/** The most connections a listener accepts at all. */
export function connectionCeiling(limits: Config['limits']): number {
  return limits.maxClients + limits.strangers.total + AWAITING_GREETING;
}

/**
 * A listener's slots as a listener uses them: `ConnectionSlots` in this process, or, in a
 * worker of a supervisor, the supervisor's one for every worker (src/supervisor/), asked over IPC.
 */
export interface Slots {
  /** A slot for a new session, or the reply that refuses it. */
  admit(session: string, address: string, trusted: boolean): Outcome | undefined | Promise<Outcome | undefined>;
  /** A stranger authenticated: it is a client of the relay now, counted with them. */
  promote(session: string): void;
  release(session: string): void;
}

export class ConnectionSlots implements Slots {
  #limits: Config['limits'];
  #trusted = new Set<string>();
  /** Stranger sessions, with their address. */
  #strangers = new Map<string, string>();
  #perAddress = new Map<string, number>();

  constructor(limits: Config['limits']) {
    this.#limits = limits;
  }

  /** A slot for a new session, or the reply that refuses it (RFC 5321 §3.1: a 421 instead of the greeting). */
  admit(session: string, address: string, trusted: boolean): Outcome | undefined {
    if (trusted) {
      if (this.#trusted.size >= this.#limits.maxClients) return failure('temporary', 421, '4.7.0', `too many connected clients (${this.#limits.maxClients}), try again in a moment`);
      this.#trusted.add(session);
      return undefined;
    }
    const { total, perAddress } = this.#limits.strangers;
    const fromAddress = this.#perAddress.get(address) ?? 0;
    if (this.#strangers.size >= total || fromAddress >= perAddress) {
      return failure('temporary', 421, '4.7.0', `too many connections from outside the trusted networks, try again later`);
    }
    this.#strangers.set(session, address);
    this.#perAddress.set(address, fromAddress + 1);
    return undefined;
  }

  promote(session: string): void {
    if (!this.#strangers.has(session)) return;
    this.#releaseStranger(session);
    this.#trusted.add(session);
  }

  release(session: string): void {
    this.#trusted.delete(session);
    this.#releaseStranger(session);
  }

  #releaseStranger(session: string): void {
    const address = this.#strangers.get(session);
    if (address === undefined) return;
    this.#strangers.delete(session);
    const left = (this.#perAddress.get(address) ?? 1) - 1;
    if (left > 0) this.#perAddress.set(address, left);
    else this.#perAddress.delete(address);
  }
}
