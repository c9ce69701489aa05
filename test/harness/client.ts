import net from 'node:net';
import tls from 'node:tls';

/** A reply as the client read it: code and the full text of the last line. */
export interface ClientReply {
  code: number;
  text: string;
  lines: string[];
}

/**
 * An internal mail server played over a raw socket, one command at a time, so a test can
 * send exactly the bytes it wants (malformed input, address tricks) and read every reply.
 */
export class RawClient {
  #socket: net.Socket;
  #buffer = '';
  #waiting?: { resolve: (reply: ClientReply) => void; reject: (err: Error) => void };
  #pending: string[] = [];
  /** Replies no command waited for (a 421 sent unasked), for `reply()`. */
  #unasked: ClientReply[] = [];
  /** Sees every reply line as it arrives, claimed by a command or not. */
  #heard?: (line: string) => void;
  closed: Promise<void>;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    this.#attach(socket);
  }

  #attach(socket: net.Socket) {
    socket.on('data', (chunk) => {
      this.#buffer += chunk.toString('latin1');
      this.#drain();
    });
    socket.on('error', (err) => this.#waiting?.reject(err));
    socket.on('close', () => this.#waiting?.reject(new Error('connection closed')));
  }

  #drain() {
    let end: number;
    while ((end = this.#buffer.indexOf('\r\n')) >= 0) {
      const line = this.#buffer.slice(0, end);
      this.#buffer = this.#buffer.slice(end + 2);
      this.#heard?.(line);
      this.#pending.push(line);
      if (/^\d{3} /.test(line) || /^\d{3}$/.test(line)) {
        const lines = this.#pending;
        this.#pending = [];
        const waiting = this.#waiting;
        this.#waiting = undefined;
        const reply = { code: Number(line.slice(0, 3)), text: line.slice(4), lines };
        if (waiting) waiting.resolve(reply);
        else this.#unasked.push(reply);
      }
    }
  }

  /** `proxyHeader`: a HAProxy PROXY v1 line sent first, as a load balancer would. `tls`: implicit TLS. */
  static async connect(
    port: number,
    options: { host?: string; localAddress?: string; proxyHeader?: string; tls?: { ca: string } } = {},
  ): Promise<{ client: RawClient; greeting: ClientReply }> {
    const host = options.host ?? '127.0.0.1';
    const socket = options.tls
      ? tls.connect({ port, host, ca: options.tls.ca, servername: 'relay.test' })
      : net.connect({ port, host, localAddress: options.localAddress });
    if (options.proxyHeader) socket.write(options.proxyHeader);
    const client = new RawClient(socket);
    const greeting = await client.#next();
    return { client, greeting };
  }

  #next(): Promise<ClientReply> {
    return new Promise((resolve, reject) => {
      if (this.#socket.destroyed && !this.#buffer.includes('\r\n')) return reject(new Error('connection closed'));
      this.#waiting = { resolve, reject };
      this.#drain();
    });
  }

  /** The next reply the server sends without being asked (a 421 when it shuts down). */
  reply(): Promise<ClientReply> {
    const unasked = this.#unasked.shift();
    return unasked ? Promise.resolve(unasked) : this.#next();
  }

  /** Sends one command line and waits for its whole reply. */
  async command(line: string): Promise<ClientReply> {
    const reply = this.#next();
    this.#socket.write(`${line}\r\n`);
    return reply;
  }

  /** DATA, then the message (dot-stuffed here), then the final reply. */
  async data(message: string | Buffer): Promise<{ intermediate: ClientReply; final?: ClientReply }> {
    const intermediate = await this.command('DATA');
    if (intermediate.code !== 354) return { intermediate };
    const text = Buffer.isBuffer(message) ? message.toString('latin1') : message;
    const stuffed = text.replace(/(^|\r\n)\./g, '$1..');
    const final = this.#next();
    this.#socket.write(Buffer.from(`${stuffed}${stuffed.endsWith('\r\n') ? '' : '\r\n'}.\r\n`, 'latin1'));
    return { intermediate, final: await final };
  }

  /** DATA and the message, without waiting for the final reply (the client that vanishes). */
  async dataWithoutReply(message: string): Promise<void> {
    const intermediate = await this.command('DATA');
    if (intermediate.code !== 354) throw new Error(`DATA refused: ${intermediate.lines.join(' | ')}`);
    this.#next().catch(() => undefined);
    const stuffed = message.replace(/(^|\r\n)\./g, '$1..');
    this.#socket.write(`${stuffed}${stuffed.endsWith('\r\n') ? '' : '\r\n'}.\r\n`);
  }

  /**
   * Writes `bytes` in one go, then shuts the sending side (TCP FIN) at once, as Exim does
   * after a pipelined `.` + `QUIT` (RFC 2920 §3.1): every reply line that arrives before the
   * server closes the connection.
   */
  async sendAndHalfClose(bytes: string): Promise<string[]> {
    const lines: string[] = [];
    this.#heard = (line) => lines.push(line);
    this.#socket.end(Buffer.from(bytes, 'latin1'));
    await this.closed;
    this.#heard = undefined;
    return lines;
  }

  async starttls(ca: string): Promise<void> {
    const reply = await this.command('STARTTLS');
    if (reply.code !== 220) throw new Error(`STARTTLS refused: ${reply.lines.join(' | ')}`);
    this.#socket.removeAllListeners('data');
    const secure = tls.connect({ socket: this.#socket, ca, servername: 'localhost', rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => secure.once('secureConnect', () => resolve()).once('error', reject));
    this.#socket = secure;
    this.#attach(secure);
  }

  /** Writes bytes as they are, reading no reply (a message cut off in the middle). */
  write(bytes: string): void {
    this.#socket.write(Buffer.from(bytes, 'latin1'));
  }

  /** Cuts the connection without QUIT, as a crashing client would. */
  destroy(): void {
    this.#socket.destroy();
  }

  async quit(): Promise<void> {
    await this.command('QUIT').catch(() => undefined);
    this.#socket.end();
    await this.closed;
  }
}
