import net from 'node:net';

/** Where in an SMTP session a destination can misbehave. */
export type Moment = 'greeting' | 'EHLO' | 'STARTTLS' | 'MAIL' | 'RCPT' | 'DATA' | 'body' | 'dot';

/**
 * What the destination does at that moment: a reply line (CRLF added), bytes as they are,
 * `reset` (TCP RST: the connection is gone mid-conversation), `close` (FIN without a word),
 * `silence` (reads on and never answers: a tarpit) or `stall` (stops reading too, so the
 * sender's writes block once the socket buffers are full). A list is done in order, its
 * replies and bytes in one write: they arrive together, as from a server that sent them at once.
 */
export type Act = string | { raw: string | Buffer } | 'reset' | 'close' | 'silence' | 'stall';

const TERMINAL = new Set<Act>(['reset', 'close', 'silence', 'stall']);

/** A message the destination accepted: it answered 2xx to its final dot. */
export interface Accepted {
  mailFrom: string;
  rcptTo: string[];
  /** The DATA bytes as they came, dot-stuffing and the final dot removed. */
  message: string;
}

/** Command verbs with a moment of their own; any other is answered 250. */
const MOMENTS = new Map<string, Moment>([['EHLO', 'EHLO'], ['HELO', 'EHLO'], ['STARTTLS', 'STARTTLS'], ['MAIL', 'MAIL'], ['RCPT', 'RCPT'], ['DATA', 'DATA']]);

const ORDINARY: Record<Moment, string> = {
  greeting: '220 faulty.test ESMTP',
  EHLO: '250-faulty.test\r\n250-8BITMIME\r\n250 SIZE 10000000',
  STARTTLS: '454 4.7.0 TLS not available',
  MAIL: '250 2.1.0 ok',
  RCPT: '250 2.1.5 ok',
  DATA: '354 go ahead',
  body: '',
  dot: '250 2.0.0 queued',
};

/**
 * A destination that misbehaves at the byte level, where smtp-server (harness/destination.ts)
 * cannot be made to: resets, tarpits, garbage and over-long replies, a TLS handshake that
 * fails, replies nobody asked for. `plan` says what to do at each moment; undefined is the
 * ordinary answer. `body` comes once per message, when its first bytes arrive.
 */
export class FaultyMx {
  /** Messages it acknowledged with 2xx after the final dot: what it "has". */
  readonly accepted: Accepted[] = [];
  /** Messages whose final dot arrived, acknowledged or not. */
  readonly completed: Accepted[] = [];
  /** What it does; read at every moment, so a test may replace it between sends. */
  plan: (moment: Moment) => Act | Act[] | undefined;
  /** Offer STARTTLS in the EHLO reply. */
  starttls = false;
  #server: net.Server;
  #sockets = new Set<net.Socket>();
  #closedWaiters: (() => void)[] = [];
  #stalled = new Set<net.Socket>();

  private constructor(server: net.Server, plan: FaultyMx['plan']) {
    this.#server = server;
    this.plan = plan;
  }

  static async start(host: string, port: number, plan: FaultyMx['plan'] = () => undefined): Promise<FaultyMx> {
    const server = net.createServer();
    const mx = new FaultyMx(server, plan);
    server.on('connection', (socket) => mx.#serve(socket));
    await new Promise<void>((resolve) => server.listen(port, host, resolve));
    return mx;
  }

  /**
   * Resolves once no connection to it is open (the relay has given up on every session).
   * Stalled connections read again first, discarding, so that the relay's close reaches them.
   */
  idle(): Promise<void> {
    for (const socket of this.#stalled) socket.resume();
    this.#stalled.clear();
    if (this.#sockets.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#closedWaiters.push(resolve));
  }

  #ordinary(moment: Moment): string | undefined {
    if (moment === 'EHLO' && this.starttls) return `${ORDINARY.EHLO.replace('250 SIZE', '250-SIZE')}\r\n250 STARTTLS`;
    return ORDINARY[moment] || undefined;
  }

  #serve(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.#sockets.delete(socket);
      this.#stalled.delete(socket);
      if (this.#sockets.size === 0) for (const resolve of this.#closedWaiters.splice(0)) resolve();
    });
    let buffer = '';
    let mode: 'command' | 'data' | 'silent' = 'command';
    let envelope: { mailFrom: string; rcptTo: string[] } = { mailFrom: '', rcptTo: [] };
    let bodyStarted = false;

    /** What to do at `moment`: the plan's acts, else the ordinary reply. */
    const acts = (moment: Moment): Act[] => {
      const planned = this.plan(moment);
      if (planned !== undefined) return Array.isArray(planned) ? planned : [planned];
      const ordinary = this.#ordinary(moment);
      return ordinary ? [ordinary] : [];
    };
    /** Does them; false when the conversation is over for this socket. */
    const perform = (list: Act[]): boolean => {
      const bytes: Buffer[] = [];
      const flush = () => bytes.length && socket.write(Buffer.concat(bytes.splice(0)));
      for (const a of list) {
        if (typeof a === 'string' && !TERMINAL.has(a)) bytes.push(Buffer.from(`${a}\r\n`, 'latin1'));
        else if (typeof a === 'object') bytes.push(Buffer.isBuffer(a.raw) ? a.raw : Buffer.from(a.raw, 'latin1'));
        else {
          flush();
          if (a === 'reset') socket.resetAndDestroy();
          else if (a === 'close') socket.end();
          else {
            mode = 'silent';
            if (a === 'stall') {
              socket.pause();
              this.#stalled.add(socket);
            }
          }
          return false;
        }
      }
      flush();
      return true;
    };
    const first = (list: Act[]): string => (typeof list[0] === 'string' ? list[0] : '');

    socket.on('data', (chunk: Buffer) => {
      if (mode === 'silent' || socket.destroyed) return;
      buffer += chunk.toString('latin1');
      for (;;) {
        if (mode === 'data') {
          if (buffer.length === 0) return;
          if (!bodyStarted) {
            bodyStarted = true;
            if (!perform(acts('body'))) return;
          }
          // RFC 5321 §4.1.1.4: the message ends at CRLF "." CRLF; an empty one is the dot alone.
          const end = buffer.startsWith('.\r\n') ? 0 : buffer.indexOf('\r\n.\r\n');
          if (end < 0) return;
          const text = end === 0 ? '' : buffer.slice(0, end + 2);
          buffer = buffer.slice(end === 0 ? 3 : end + 5);
          const message = { ...envelope, message: text.replace(/(^|\r\n)\.\./g, '$1.') };
          this.completed.push(message);
          mode = 'command';
          bodyStarted = false;
          const reply = acts('dot');
          if (!perform(reply)) return;
          if (first(reply).startsWith('2')) this.accepted.push(message);
          continue;
        }
        const end = buffer.indexOf('\r\n');
        if (end < 0) return;
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const verb = line.split(' ')[0].toUpperCase();
        if (verb === 'QUIT') {
          socket.end('221 2.0.0 bye\r\n');
          return;
        }
        const moment = MOMENTS.get(verb);
        if (!moment) {
          socket.write('250 2.0.0 ok\r\n');
          continue;
        }
        if (moment === 'MAIL') envelope = { mailFrom: /<(.*)>/.exec(line)?.[1] ?? '', rcptTo: [] };
        if (moment === 'RCPT') envelope.rcptTo.push(/<(.*)>/.exec(line)?.[1] ?? '');
        const reply = acts(moment);
        if (!perform(reply)) return;
        if (moment === 'DATA' && first(reply).startsWith('354')) mode = 'data';
      }
    });
    perform(acts('greeting'));
  }

  /** Stops listening and drops every connection still open. */
  close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}
