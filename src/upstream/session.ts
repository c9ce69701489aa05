import net from 'node:net';
import tls from 'node:tls';
import { LineEnds } from '../message/index.ts';
import { ReplyParser, formatReply, type Reply } from '../smtp/index.ts';

/**
 * `opportunistic`: STARTTLS when offered, any certificate, plain text otherwise (RFC 7435).
 * `required`: STARTTLS must be offered and succeed, else the session ends before any mail
 * command (RFC 3207 §4: a client that needs TLS gives up rather than continue in the clear).
 * `never`: plain text.
 */
export type StartTlsMode = 'opportunistic' | 'required' | 'never';

/** Milliseconds. Defaults follow RFC 5321 §4.5.3.2 where it gives a figure. */
export interface SessionTimeouts {
  /** TCP connect; RFC 5321 has no figure. Default 30 s. */
  connect?: number;
  /** 220 greeting, §4.5.3.2.1: 5 min. */
  greeting?: number;
  /** EHLO/HELO, MAIL, RCPT, RSET, NOOP, STARTTLS, §4.5.3.2.2-3: 5 min. */
  command?: number;
  /** The 354 after DATA, §4.5.3.2.4: 2 min. */
  dataStart?: number;
  /** Each blocked write of the message, §4.5.3.2.5: 3 min. */
  dataBlock?: number;
  /** The reply after the final dot, §4.5.3.2.6: 10 min. */
  dataDone?: number;
  /** TLS handshake after STARTTLS; RFC 3207 has no figure. Default 30 s. */
  tlsHandshake?: number;
  /** The 221 after QUIT: nothing depends on it, so short. Default 5 s. */
  quit?: number;
}

export interface SessionOptions {
  /** Address to connect to, already resolved. */
  host: string;
  port: number;
  /** The MX host name: TLS server name (SNI and certificate check) and log label. */
  hostname?: string;
  /** Egress address to bind. */
  localAddress?: string;
  /** Name sent in EHLO/HELO. */
  helo: string;
  /**
   * See StartTlsMode. Whether the certificate verified is recorded in `session.tls.authorized`
   * either way; `verify` makes it a condition of the session.
   */
  starttls: StartTlsMode;
  /**
   * With `starttls: 'required'`: the certificate must chain to a trusted CA and name
   * `hostname` (RFC 6125), checked right after the handshake; otherwise the session ends
   * (QUIT over the new TLS layer) and openSession rejects with kind `tls`.
   */
  verify?: boolean;
  tlsOptions?: tls.ConnectionOptions;
  timeouts?: SessionTimeouts;
}

export interface TlsInfo {
  /** `TLSv1.3`, `TLSv1.2` … */
  version: string;
  /** OpenSSL/IANA cipher suite name. */
  cipher: string;
  /** Chain and host name verified against the trusted CAs. */
  authorized: boolean;
  /** Why it did not verify (`DEPTH_ZERO_SELF_SIGNED_CERT`, `ERR_TLS_CERT_ALTNAME_INVALID` …). */
  authorizationError?: string;
  /** The names the certificate holds (`DNS:mx.example.com, …`), when it did not verify: what the admin compares. */
  certificateNames?: string;
}

export type UpstreamErrorKind = 'connect' | 'timeout' | 'lost' | 'protocol' | 'tls' | 'reply';

/**
 * The session could not do what was asked. `reply` is set when a server reply is the reason
 * (kind `reply`: greeting or EHLO/HELO refused; kind `lost` after the server said 421).
 */
export class UpstreamError extends Error {
  override name = 'UpstreamError';
  readonly kind: UpstreamErrorKind;
  readonly reply: Reply | undefined;

  constructor(kind: UpstreamErrorKind, message: string, options: { reply?: Reply; cause?: unknown } = {}) {
    super(message, 'cause' in options ? { cause: options.cause } : undefined);
    this.kind = kind;
    this.reply = options.reply;
  }
}

type Timeouts = Required<SessionTimeouts>;

const DEFAULT_TIMEOUTS: Timeouts = {
  connect: 30_000,
  greeting: 5 * 60_000,
  command: 5 * 60_000,
  dataStart: 2 * 60_000,
  dataBlock: 3 * 60_000,
  dataDone: 10 * 60_000,
  tlsHandshake: 30_000,
  quit: 5_000,
};

/** The message for DATA: a stream, an async generator or an array of chunks. */
export type MessageSource = AsyncIterable<Buffer | Uint8Array | string> | Iterable<Buffer | Uint8Array | string>;

const LF = 0x0a;
const DOT = 0x2e;
const DOT_BUF = Buffer.from('.');
const END = '.\r\n';

/** Where the line after the next LF from `from` starts in the chunk, or -1 if not in it. */
function lineAfter(chunk: Buffer, from: number): number {
  const lf = chunk.indexOf(LF, from);
  return lf < 0 || lf === chunk.length - 1 ? -1 : lf + 1;
}

/**
 * Message bytes to DATA wire format, one chunk at a time, without ever holding more than the
 * current chunk. Line ends become CRLF by `LineEnds` (RFC 5321 §2.3.8: bare CR and bare LF
 * are not allowed in mail data), then a '.' starting a line is doubled (§4.5.2). State
 * carried between chunks: whether a line has just begun (a '.' at the start of the next chunk).
 */
class DataEncoder {
  #lines = new LineEnds();
  #lineStart = true;

  /** Returns the input itself when nothing had to change, so the common case copies nothing. */
  push(chunk: Buffer): Buffer {
    const crlf = this.#lines.push(chunk);
    if (crlf.length === 0) return crlf;
    let parts: Buffer[] | undefined;
    let start = 0;
    // Lines start at the chunk's start if one had just begun, and after each LF in it.
    for (let at = this.#lineStart ? 0 : lineAfter(crlf, 0); at >= 0; at = lineAfter(crlf, at)) {
      if (crlf[at] === DOT) {
        (parts ??= []).push(crlf.subarray(start, at), DOT_BUF);
        start = at;
      }
    }
    this.#lineStart = crlf[crlf.length - 1] === LF;
    if (!parts) return crlf;
    parts.push(crlf.subarray(start));
    return Buffer.concat(parts);
  }

  /** What closes the message: the missing end of the last line, if any, then the lone dot. */
  end(): Buffer {
    // A bare CR at the very end gets its LF from `LineEnds`; any other unended last line a CRLF.
    const tail = this.#lines.end();
    return Buffer.concat([tail, Buffer.from(tail.length || this.#lineStart ? END : '\r\n' + END)]);
  }
}

function toBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (typeof chunk === 'string') return Buffer.from(chunk, 'utf8');
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  throw new TypeError('message stream must yield Buffers, Uint8Arrays or strings');
}

// Anything that could end the command line early or smuggle a second command (CR, LF, NUL…).
const CONTROL = /[\x00-\x1f\x7f]/;

function checkAddress(address: string, what: string): string {
  if (CONTROL.test(address) || /[<>]/.test(address)) {
    throw new TypeError(`${what} address contains characters that cannot be sent: ${JSON.stringify(address)}`);
  }
  return address;
}

// RFC 5321 §4.1.2: esmtp-keyword and esmtp-value (any visible character but '='; RFC 6531 adds UTF-8).
const ESMTP_KEYWORD = /^[A-Za-z0-9][A-Za-z0-9-]*$/;
const ESMTP_VALUE = /^[^\x00-\x20\x7f=]+$/;

function formatParams(params: Record<string, string | true>): string {
  let out = '';
  for (const [keyword, value] of Object.entries(params)) {
    if (!ESMTP_KEYWORD.test(keyword)) throw new TypeError(`invalid ESMTP parameter name ${JSON.stringify(keyword)}`);
    if (value === true || value === '') {
      out += ` ${keyword}`;
    } else {
      if (!ESMTP_VALUE.test(value)) throw new TypeError(`invalid value for ESMTP parameter ${keyword}: ${JSON.stringify(value)}`);
      out += ` ${keyword}=${value}`;
    }
  }
  return out;
}

function isPositive(reply: Reply): boolean {
  return reply.code >= 200 && reply.code < 300;
}

/** RFC 5321 §4.1.1.1: the first line names the server; each further line is `KEYWORD params`. */
function parseEhlo(reply: Reply): Map<string, string> {
  const extensions = new Map<string, string>();
  for (const line of reply.lines.slice(1)) {
    const [keyword, ...params] = line.trim().split(/\s+/);
    if (keyword) extensions.set(keyword.toUpperCase(), params.join(' '));
  }
  return extensions;
}

/** SASL mechanisms from `AUTH PLAIN LOGIN`, and from the pre-standard `AUTH=LOGIN` some servers still send. */
function authMechanisms(extensions: ReadonlyMap<string, string>): Set<string> {
  const mechanisms = new Set<string>();
  for (const [keyword, params] of extensions) {
    const words = keyword === 'AUTH' ? params.split(/\s+/) : keyword.startsWith('AUTH=') ? [keyword.slice(5), ...params.split(/\s+/)] : [];
    for (const word of words) if (word) mechanisms.add(word.toUpperCase());
  }
  return mechanisms;
}

/** RFC 6066 §3: SNI carries a DNS name only, never an address, without the trailing dot. */
function serverName(hostname: string | undefined): string | undefined {
  if (!hostname) return undefined;
  const name = hostname.replace(/\.$/, '');
  return name && net.isIP(name) === 0 ? name : undefined;
}

function connectSocket(opts: SessionOptions, timeout: number): Promise<net.Socket> {
  const where = `${opts.hostname ?? opts.host} [${opts.host}]:${opts.port}`;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: opts.host, port: opts.port, localAddress: opts.localAddress, noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new UpstreamError('timeout', `connect to ${where} timed out after ${timeout} ms`));
    }, timeout);
    const onError = (err: Error): void => {
      clearTimeout(timer);
      reject(new UpstreamError('connect', `connect to ${where} failed: ${err.message}`, { cause: err }));
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      clearTimeout(timer);
      // The session attaches its own handlers before any further I/O event can fire: only
      // microtasks run between this and the `await` that receives the socket.
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

/** A reply that came while the message was still being sent; it ends the transaction. */
class EarlyReply {
  readonly reply: Reply;
  constructor(reply: Reply) {
    this.reply = reply;
  }
}

interface ReplyWaiter {
  resolve: (reply: Reply) => void;
  reject: (err: UpstreamError) => void;
  timer: NodeJS.Timeout;
}

// Only openSession can make a session: the constructor needs this value.
const internal: unique symbol = Symbol('UpstreamSession');
let open: (opts: SessionOptions) => Promise<UpstreamSession>;

/**
 * One SMTP client session to one destination host. Each command resolves with the server's
 * reply as soon as it arrives, whatever its code; only transport failures reject. Calls are
 * queued and sent one at a time, in call order.
 */
export class UpstreamSession {
  readonly hostname: string | undefined;
  readonly remoteAddress: string;
  readonly localAddress: string;

  #socket: net.Socket;
  #opts: SessionOptions;
  #timeouts: Timeouts;
  #parser = new ReplyParser();
  #extensions: ReadonlyMap<string, string> = new Map();
  #tls: TlsInfo | null = null;
  #handshaking = false;
  /** Commands written and not yet answered, oldest first: more than one only when pipelined (RFC 2920). */
  #waiters: ReplyWaiter[] = [];
  #streaming = false;
  #early: Reply | null = null;
  // Wakes a wait that no reply ends (a drain during DATA, the TLS handshake) when a reply
  // or a failure arrives.
  #wake: (() => void) | null = null;
  // Why the session can no longer be used; set once, by whatever ended it first.
  #failure: UpstreamError | null = null;
  #tail: Promise<unknown> = Promise.resolve();

  constructor(key: typeof internal, socket: net.Socket, opts: SessionOptions, timeouts: Timeouts) {
    if (key !== internal) throw new TypeError('use openSession() to create an UpstreamSession');
    this.#socket = socket;
    this.#opts = opts;
    this.#timeouts = timeouts;
    this.hostname = opts.hostname;
    this.remoteAddress = socket.remoteAddress ?? opts.host;
    this.localAddress = socket.localAddress ?? opts.localAddress ?? '';
    this.#attach(socket);
  }

  /** EHLO keywords, upper-cased, to their parameters (`SIZE` → `35882577`, `8BITMIME` → empty). Empty after HELO. */
  get extensions(): ReadonlyMap<string, string> {
    return this.#extensions;
  }

  /** Set when STARTTLS succeeded. */
  get tls(): TlsInfo | null {
    return this.#tls;
  }

  /** No further command can be sent: QUIT, close(), a 421, a timeout or a lost connection. */
  get closed(): boolean {
    return this.#failure !== null;
  }

  /**
   * `MAIL FROM:<address>` with ESMTP parameters (`{ SIZE: '1234', BODY: '8BITMIME', SMTPUTF8: true }`).
   * `''` is the null reverse-path (RFC 5321 §4.5.5). Parameters are sent as given: checking
   * them against `extensions` is the caller's business.
   */
  async mailFrom(address: string, params: Record<string, string | true> = {}): Promise<Reply> {
    const line = `MAIL FROM:<${checkAddress(address, 'MAIL FROM')}>${formatParams(params)}`;
    return this.#enqueue(() => this.#command(line, this.#timeouts.command, 'MAIL FROM'));
  }

  /**
   * MAIL FROM and the first RCPT TO in one write, when the server offers PIPELINING (RFC 2920
   * §3.1: both may be sent without waiting): one round trip and one write instead of two.
   * Their replies, in order; the RCPT's means nothing when the MAIL was refused (RFC 2920 §3.2).
   */
  async mailAndRcpt(sender: string, params: Record<string, string | true>, recipient: string): Promise<[Reply, Reply]> {
    if (!this.#extensions.has('PIPELINING')) throw new TypeError('the server does not offer PIPELINING');
    const mail = `MAIL FROM:<${checkAddress(sender, 'MAIL FROM')}>${formatParams(params)}`;
    const rcpt = `RCPT TO:<${checkAddress(recipient, 'RCPT TO')}>`;
    return this.#enqueue(async () => {
      if (this.#failure) throw this.#closedError();
      this.#socket.write(`${mail}\r\n${rcpt}\r\n`);
      const replies = [this.#readReply(this.#timeouts.command, 'MAIL FROM'), this.#readReply(this.#timeouts.command, 'RCPT TO')];
      // When the session ends at MAIL (a 421, a reset, a timeout) the RCPT's waiter is rejected
      // too, and nobody awaits it then: handled here, or it would end the process.
      replies[1].catch(() => undefined);
      const first = await replies[0];
      if (first.code === 421) {
        this.#end(first);
        return [first, first];
      }
      const second = await replies[1];
      if (second.code === 421) this.#end(second);
      return [first, second];
    });
  }

  async rcptTo(address: string, params: Record<string, string | true> = {}): Promise<Reply> {
    if (address === '') throw new TypeError('RCPT TO needs an address');
    const line = `RCPT TO:<${checkAddress(address, 'RCPT TO')}>${formatParams(params)}`;
    return this.#enqueue(() => this.#command(line, this.#timeouts.command, 'RCPT TO'));
  }

  /**
   * DATA, then the message. Each chunk is on its way to the kernel before the next is asked
   * for, so a source may reuse one buffer for every chunk. If the server does not answer 354
   * that reply is returned and the stream is left unread. Otherwise the stream is consumed (and so ends or is destroyed) and
   * the final reply is returned. A reply that arrives before the message is fully sent ends
   * the transaction: it is returned and the session is closed, since the server's state is
   * unknown. If the stream errors, the connection is dropped before the final dot, so the
   * server cannot accept a truncated message, and the stream's own error is thrown.
   */
  async data(message: MessageSource): Promise<Reply> {
    return this.#enqueue(async () => {
      const intermediate = await this.#command('DATA', this.#timeouts.dataStart, 'DATA');
      if (intermediate.code !== 354) {
        // A success before the message was sent would read as delivery of nothing.
        if (intermediate.code < 400) {
          this.#end(intermediate);
          throw new UpstreamError('protocol', `server answered DATA with ${formatReply(intermediate)} instead of 354`, { reply: intermediate });
        }
        return intermediate;
      }
      const early = await this.#sendMessage(message);
      if (early) {
        this.#end(early);
        if (isPositive(early)) {
          throw new UpstreamError('protocol', `server accepted the message before it was sent: ${formatReply(early)}`, {
            reply: early,
          });
        }
        return early;
      }
      const final = await this.#readReply(this.#timeouts.dataDone, 'end of DATA');
      if (final.code === 421) this.#end(final);
      return final;
    });
  }

  /**
   * RFC 4954 AUTH as `user`, with PLAIN (RFC 4616) when the server offers it, else LOGIN.
   * Resolves with the server's last reply (235 on success, whatever it said otherwise).
   * Credentials never go out before TLS unless `allowCleartext`: a listener on the path
   * would read them, and they open the smarthost to anyone who has them.
   */
  async auth(user: string, password: string, options: { allowCleartext?: boolean } = {}): Promise<Reply> {
    if (!this.#tls && !options.allowCleartext) {
      throw new UpstreamError('protocol', 'credentials are sent only over TLS, and this session has none');
    }
    const mechanisms = authMechanisms(this.#extensions);
    const encode = (text: string): string => Buffer.from(text, 'utf8').toString('base64');
    return this.#enqueue(async () => {
      const timeout = this.#timeouts.command;
      if (mechanisms.has('PLAIN')) return this.#command(`AUTH PLAIN ${encode(`\0${user}\0${password}`)}`, timeout, 'AUTH PLAIN');
      if (mechanisms.has('LOGIN')) {
        // RFC 4954 §4: each 334 asks for the next piece (user name, then password).
        const start = await this.#command('AUTH LOGIN', timeout, 'AUTH LOGIN');
        if (start.code !== 334) return start;
        const name = await this.#command(encode(user), timeout, 'AUTH LOGIN user name');
        if (name.code !== 334) return name;
        return this.#command(encode(password), timeout, 'AUTH LOGIN password');
      }
      const offered = [...mechanisms].join(' ') || 'none';
      throw new UpstreamError('protocol', `server offers no AUTH mechanism the relay can use (PLAIN or LOGIN; offered: ${offered})`);
    });
  }

  async rset(): Promise<Reply> {
    return this.#enqueue(() => this.#command('RSET', this.#timeouts.command, 'RSET'));
  }

  /** Cheap liveness check before reusing an idle session. */
  async noop(): Promise<Reply> {
    return this.#enqueue(() => this.#command('NOOP', this.#timeouts.command, 'NOOP'));
  }

  /** QUIT after any queued commands, wait briefly for the reply and the close. Never throws. */
  async quit(): Promise<void> {
    await this.#enqueue(async () => {
      if (this.#failure) return;
      this.#socket.write('QUIT\r\n');
      await this.#readReply(this.#timeouts.quit, 'QUIT');
    }).catch(() => undefined);
    const socket = this.#socket;
    this.#fail(new UpstreamError('lost', 'session ended with QUIT'), false);
    if (socket.closed) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => socket.destroy(), this.#timeouts.quit);
      socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.end();
    });
  }

  /** Drop the connection now; anything outstanding rejects with kind `lost`. */
  close(): void {
    this.#fail(new UpstreamError('lost', 'session closed locally'));
  }

  static {
    open = async (opts) => {
      if (CONTROL.test(opts.helo) || /\s/.test(opts.helo) || opts.helo === '') {
        throw new TypeError(`unusable HELO name ${JSON.stringify(opts.helo)}`);
      }
      const timeouts: Timeouts = { ...DEFAULT_TIMEOUTS };
      for (const [name, value] of Object.entries(opts.timeouts ?? {})) {
        if (value !== undefined) timeouts[name as keyof Timeouts] = value;
      }
      const socket = await connectSocket(opts, timeouts.connect);
      const session = new UpstreamSession(internal, socket, opts, timeouts);
      try {
        // RFC 5321 §3.1: 220 opens the session, 554 refuses it (§4.2.1 allows no other 2yz).
        const greeting = await session.#readReply(timeouts.greeting, 'greeting');
        if (!isPositive(greeting)) await session.#refused('greeting', greeting);
        await session.#hello();
        if (opts.starttls !== 'never') await session.#startTls(opts.starttls === 'required');
        return session;
      } catch (err) {
        session.close();
        throw err;
      }
    };
  }

  async #startTls(required: boolean): Promise<void> {
    const where = this.hostname ?? this.remoteAddress;
    if (!this.#extensions.has('STARTTLS')) {
      if (!required) return;
      await this.quit();
      throw new UpstreamError('tls', `${where} does not offer STARTTLS`);
    }
    const reply = await this.#command('STARTTLS', this.#timeouts.command, 'STARTTLS');
    if (reply.code === 421) await this.#refused('STARTTLS', reply);
    if (reply.code !== 220) {
      // A 454 (TLS not available) leaves an opportunistic session usable in plain text
      // (RFC 3207 §4, RFC 7435); a required one ends here.
      if (!required) return;
      await this.quit();
      throw new UpstreamError('tls', `${where} refused STARTTLS: ${formatReply(reply)}`, { reply });
    }
    await this.#upgrade();
    const info = this.#tls!;
    if (required && this.#opts.verify && !info.authorized) {
      // Nothing but QUIT goes to a server whose identity is not proven.
      await this.quit();
      const names = info.certificateNames ? `; it names ${info.certificateNames}` : '';
      throw new UpstreamError('tls', `certificate of ${where} not verified (${info.authorizationError ?? 'unknown reason'}${names})`);
    }
    // RFC 3207 §4.2: everything learnt before TLS is discarded; ask again.
    await this.#hello();
  }

  async #refused(what: string, reply: Reply): Promise<never> {
    // RFC 5321 §3.1: after a refusal the client SHOULD still QUIT, unless the server is gone (421).
    if (reply.code !== 421) await this.quit();
    throw new UpstreamError('reply', `${what} refused: ${formatReply(reply)}`, { reply });
  }

  async #hello(): Promise<void> {
    const ehlo = await this.#command(`EHLO ${this.#opts.helo}`, this.#timeouts.command, 'EHLO');
    if (isPositive(ehlo)) {
      this.#extensions = parseEhlo(ehlo);
      return;
    }
    // RFC 5321 §3.2: a server that rejects EHLO as unknown gets HELO, and no extensions.
    if (ehlo.code >= 500) {
      const helo = await this.#command(`HELO ${this.#opts.helo}`, this.#timeouts.command, 'HELO');
      if (isPositive(helo)) {
        this.#extensions = new Map();
        return;
      }
      return this.#refused('HELO', helo);
    }
    return this.#refused('EHLO', ehlo);
  }

  async #upgrade(): Promise<void> {
    if (this.#failure) throw this.#failure;
    // RFC 3207 §4.2 and the STARTTLS injection bugs (CVE-2011-0411 and kin): plaintext sent
    // after the 220 must never be read as if it came over TLS. Nothing may follow the 220 at
    // all, so its presence is an error rather than something to discard.
    if (this.#parser.pending) {
      this.#fail(new UpstreamError('protocol', 'server sent data after 220 to STARTTLS'));
      throw this.#failure;
    }
    const raw = this.#socket;
    raw.off('data', this.#onData);
    raw.off('close', this.#onClose);
    const servername = serverName(this.#opts.hostname);
    const secure = tls.connect({
      rejectUnauthorized: false,
      // `host` is what the certificate is checked against when there is no server name.
      host: servername ?? this.#opts.host,
      ...(servername ? { servername } : {}),
      ...this.#opts.tlsOptions,
      socket: raw,
    });
    this.#socket = secure;
    this.#handshaking = true;
    this.#attach(secure);
    if (this.#failure) throw this.#failure;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#fail(new UpstreamError('timeout', `TLS handshake timed out after ${this.#timeouts.tlsHandshake} ms`));
      }, this.#timeouts.tlsHandshake);
      const done = (): void => {
        clearTimeout(timer);
        this.#wake = null;
        secure.off('secureConnect', done);
        if (this.#failure) reject(this.#failure);
        else resolve();
      };
      secure.once('secureConnect', done);
      this.#wake = done;
    });
    this.#handshaking = false;
    const cipher = secure.getCipher();
    const names = secure.authorized ? undefined : secure.getPeerCertificate().subjectaltname;
    this.#tls = {
      version: secure.getProtocol() ?? 'unknown',
      cipher: cipher.standardName ?? cipher.name,
      authorized: secure.authorized,
      ...(secure.authorizationError ? { authorizationError: String(secure.authorizationError) } : {}),
      ...(names ? { certificateNames: names } : {}),
    };
  }

  #attach(socket: net.Socket): void {
    socket.on('data', this.#onData);
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
  }

  #onData = (chunk: Buffer): void => {
    let replies: Reply[];
    try {
      replies = this.#parser.push(chunk);
    } catch (err) {
      this.#fail(new UpstreamError('protocol', `unparsable reply: ${(err as Error).message}`, { cause: err }));
      return;
    }
    for (const reply of replies) {
      if (this.#failure) return;
      this.#onReply(reply);
    }
  };

  #onReply(reply: Reply): void {
    const waiter = this.#waiters.shift();
    if (waiter) {
      clearTimeout(waiter.timer);
      waiter.resolve(reply);
      return;
    }
    if (this.#streaming) {
      this.#early ??= reply;
      this.#wake?.();
      return;
    }
    // RFC 5321 §3.8: a server shutting down may say 421 unasked, then close.
    if (reply.code === 421) {
      this.#fail(new UpstreamError('lost', `server closed the session: ${formatReply(reply)}`, { reply }));
      return;
    }
    this.#fail(new UpstreamError('protocol', `reply without a command: ${formatReply(reply)}`, { reply }));
  }

  #onError = (err: Error): void => {
    const kind = this.#handshaking ? 'tls' : 'lost';
    const what = this.#handshaking ? 'TLS handshake failed' : 'connection failed';
    this.#fail(new UpstreamError(kind, `${what}: ${err.message}`, { cause: err }));
  };

  #onClose = (): void => {
    if (this.#handshaking) this.#fail(new UpstreamError('tls', 'connection closed during TLS handshake'));
    else this.#fail(new UpstreamError('lost', 'connection closed by server'));
  };

  /** Ends the session for `reason` (the first one wins) and wakes whatever was waiting. */
  #fail(reason: UpstreamError, destroy = true): void {
    if (this.#failure) return;
    this.#failure = reason;
    if (destroy) this.#socket.destroy();
    for (const waiter of this.#waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(reason);
    }
    this.#wake?.();
  }

  /** The server ended the session with `reply` (421, or an early reply during DATA). */
  #end(reply: Reply): void {
    this.#fail(new UpstreamError('lost', `session ended by server: ${formatReply(reply)}`, { reply }));
  }

  #enqueue<T>(task: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(task);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  #closedError(): UpstreamError {
    const failure = this.#failure;
    return new UpstreamError('lost', `session is closed (${failure?.message ?? 'closed'})`, {
      ...(failure?.reply ? { reply: failure.reply } : {}),
      cause: failure,
    });
  }

  async #command(line: string, timeout: number, what: string): Promise<Reply> {
    if (this.#failure) throw this.#closedError();
    this.#socket.write(line + '\r\n');
    const reply = await this.#readReply(timeout, what);
    if (reply.code === 421) this.#end(reply);
    return reply;
  }

  #readReply(timeout: number, what: string): Promise<Reply> {
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // RFC 5321 §4.5.3.2: a client that times out treats the command as failed and closes;
        // a late reply would otherwise be taken for the answer to the next command.
        this.#fail(new UpstreamError('timeout', `no reply to ${what} within ${timeout} ms`));
      }, timeout);
      this.#waiters.push({ resolve, reject, timer });
    });
  }

  /** Streams the message and the final dot. Returns a reply that arrived before the end, else null. */
  async #sendMessage(message: MessageSource): Promise<Reply | null> {
    const encoder = new DataEncoder();
    this.#streaming = true;
    this.#early = null;
    try {
      for await (const chunk of message) {
        const out = encoder.push(toBuffer(chunk));
        if (out.length > 0) await this.#write(out);
      }
      this.#check();
      // No drain wait for the last piece: the final reply is awaited anyway.
      this.#socket.write(encoder.end());
    } catch (err) {
      if (err instanceof EarlyReply) return err.reply;
      if (err === this.#failure) throw err;
      // The source failed: the message is incomplete and must never be accepted. Dropping
      // the connection before the final dot guarantees that (RFC 5321 §4.1.1.4: no dot, no mail).
      this.#fail(new UpstreamError('lost', 'message source failed, session aborted', { cause: err }));
      throw err;
    } finally {
      // A reply arriving from here on answers the final dot: data() is already waiting for it.
      this.#streaming = false;
    }
    return null;
  }

  #check(): void {
    if (this.#failure) throw this.#failure;
    if (this.#early) throw new EarlyReply(this.#early);
  }

  async #write(chunk: Buffer): Promise<void> {
    this.#check();
    const socket = this.#socket;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#wake = null;
        resolve();
      };
      const timer = setTimeout(() => {
        this.#fail(new UpstreamError('timeout', `server did not take message data within ${this.#timeouts.dataBlock} ms`));
      }, this.#timeouts.dataBlock);
      this.#wake = done;
      // The callback runs once the chunk has left for the kernel: the source may then reuse it.
      socket.write(chunk, () => this.#wake === done && done());
    });
    this.#check();
  }

}

/**
 * Connect (from `localAddress`), read the greeting, EHLO (HELO if EHLO is refused with 5xx),
 * STARTTLS when offered and wanted, then EHLO again. Rejects with an UpstreamError: kind
 * `reply` (with the reply) when the greeting or EHLO/HELO is refused.
 */
export function openSession(opts: SessionOptions): Promise<UpstreamSession> {
  return open(opts);
}
