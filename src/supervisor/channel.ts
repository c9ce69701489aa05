/**
 * Requests and answers over the IPC channel node:cluster opens between the supervisor and a
 * worker, both ways: `call` resolves with the other side's answer (or rejects with its error,
 * or when none comes in time); `notify` needs no answer. The channel keeps the order of
 * messages, so a notification sent after a call is handled after it. prom-client's and
 * rate-limiter-flexible's messages share the channel; `receive` leaves them alone.
 */

const CHANNEL = 'hygiene-relay';
/** A supervisor or a worker that has not answered by then is stuck or gone: the caller decides. */
const TIMEOUT_MS = 5000;

export type Handlers = Record<string, (...args: never[]) => unknown>;

/** The sending half: a cluster Worker in the supervisor, `process` in a worker. */
export interface Endpoint {
  send(message: object, callback: (err: Error | null) => void): boolean;
}

interface Message {
  channel: typeof CHANNEL;
  /** A call: the name, its arguments, and the id the answer comes back with (none for a notification). */
  call?: string;
  args?: unknown[];
  id?: number;
  /** An answer: the id of its call, and the result or the error's message. */
  answers?: number;
  result?: unknown;
  error?: string;
}

interface Pending {
  resolve(result: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

export class Channel {
  #endpoint: Endpoint;
  #handlers: Handlers = {};
  #pending = new Map<number, Pending>();
  #next = 0;
  #closed: string | undefined;

  constructor(endpoint: Endpoint) {
    this.#endpoint = endpoint;
  }

  /** Answers the other side's calls and notifications of these names. */
  handle(handlers: Handlers): void {
    Object.assign(this.#handlers, handlers);
  }

  call<T>(name: string, ...args: unknown[]): Promise<T> {
    return this.callWithin<T>(TIMEOUT_MS, name, ...args);
  }

  callWithin<T>(timeout: number, name: string, ...args: unknown[]): Promise<T> {
    if (this.#closed) return Promise.reject(new Error(this.#closed));
    const id = ++this.#next;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => this.#settle(id, { error: `no answer to ${name} within ${timeout / 1000} s` }), timeout);
      this.#pending.set(id, { resolve: resolve as (result: unknown) => void, reject, timer });
      this.#send({ channel: CHANNEL, call: name, args, id }, (err) => this.#settle(id, { error: err.message }));
    });
  }

  notify(name: string, ...args: unknown[]): void {
    if (!this.#closed) this.#send({ channel: CHANNEL, call: name, args }, () => undefined);
  }

  /** A message from the other side: true when it was this channel's. */
  receive(message: unknown): boolean {
    const m = message as Message | null;
    if (typeof m !== 'object' || m === null || m.channel !== CHANNEL) return false;
    if (m.answers !== undefined) {
      this.#settle(m.answers, m);
      return true;
    }
    const handler = this.#handlers[m.call ?? ''] as ((...args: unknown[]) => unknown) | undefined;
    const answer = (reply: Pick<Message, 'result' | 'error'>) => {
      if (m.id !== undefined && !this.#closed) this.#send({ channel: CHANNEL, answers: m.id, ...reply }, () => undefined);
    };
    if (!handler) {
      answer({ error: `no such call: ${m.call}` });
      return true;
    }
    void (async () => handler(...(m.args ?? [])))().then(
      (result) => answer({ result }),
      (err: unknown) => answer({ error: err instanceof Error ? err.message : String(err) }),
    );
    return true;
  }

  /** The other side is gone: calls waiting for it fail now, later ones at once. */
  close(why: string): void {
    this.#closed = why;
    for (const id of [...this.#pending.keys()]) this.#settle(id, { error: why });
  }

  #send(message: Message, failed: (err: Error) => void): void {
    // The callback form: a closed channel is an error here, never an 'error' event that nobody handles.
    this.#endpoint.send(message, (err) => {
      if (err) failed(err);
    });
  }

  #settle(id: number, reply: Pick<Message, 'result' | 'error'>): void {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    if (reply.error !== undefined) pending.reject(new Error(reply.error));
    else pending.resolve(reply.result);
  }
}
