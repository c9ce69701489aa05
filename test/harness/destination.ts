import { promises as dnsPromises } from 'node:dns';
import net from 'node:net';
import type { TLSSocket } from 'node:tls';
import { authenticate, type AuthenticateResult, type DNSResolver } from 'mailauth';
import {
  SMTPServer,
  type SMTPServerDataStream,
  type SMTPServerOptions,
  type SMTPServerSession,
} from 'smtp-server';
import { testCertificate } from './tls.ts';

/** `message` may start with an enhanced status code: `'5.1.1 The account does not exist'`. */
export interface ScriptedReply {
  code: number;
  message: string;
}

/**
 * How the destination answers. A hook returning undefined, or a reply below 400, accepts;
 * smtp-server then says its own `250 2.1.0 Accepted` / `250 2.1.5 Accepted`, and for DATA
 * `250 2.6.0 OK: message queued` unless a 2xx reply from `data` supplies the text.
 */
export interface DestinationScript {
  /** A reply instead of the greeting (a `421` when busy): smtp-server sends it and closes the connection. */
  connect?: () => ScriptedReply | undefined;
  mailFrom?: (address: string) => ScriptedReply | undefined;
  rcptTo?: (address: string) => ScriptedReply | undefined;
  data?: (message: Buffer, envelope: Envelope) => ScriptedReply | undefined;
  /** Destroy the client's socket at this RCPT TO instead of answering it (a connection reset). */
  dropAtRcpt?: (address: string) => boolean;
  /** Destroy the client's socket once part of the DATA has arrived, before any reply; a function decides per DATA. */
  dropMidData?: boolean | (() => boolean);
}

export interface Envelope {
  mailFrom: string;
  rcptTo: string[];
  /** Present when the client sent REQUIRETLS on MAIL FROM (RFC 8689). */
  requireTls?: true;
}

export interface AuthVerdict {
  spf: string;
  /** One result word per DKIM signature; empty for an unsigned message. */
  dkim: string[];
  dmarc: string;
  /** The first address of the From header, as mailauth parsed it. */
  headerFrom?: string;
  /** mailauth's whole `authenticate()` result, for assertions the summary does not cover. */
  raw: AuthenticateResult;
}

export interface ReceivedMessage {
  /** The address the destination saw the connection come from: the relay's egress. */
  clientAddress: string;
  helo: string;
  secure: boolean;
  tlsProtocol?: string;
  envelope: Envelope;
  /** Exactly the bytes received, after smtp-server removed the dot-stuffing. */
  message: Buffer;
  /** smtp-server's session id: equal for transactions on one connection. */
  connectionId: string;
  /** The user the client authenticated as (a destination with `auth`). */
  user?: string;
  /** Present when the destination was started with a `dnsServer`. */
  verdict?: AuthVerdict;
}

export interface DestinationOptions {
  /** A loopback address, e.g. 127.0.0.3. */
  host: string;
  /** 0 (the default) picks a free port. */
  port?: number;
  /** Greeting name and certificate name; default 'mx.test'. */
  name?: string;
  /** Offer STARTTLS with a certificate for [name, host] from tls.ts; default true. */
  starttls?: boolean;
  /** The names the certificate carries instead of [name, host] (a certificate for the wrong host). */
  certificateNames?: string[];
  /** After STARTTLS, do not offer REQUIRETLS (RFC 8689), as most servers still do not. */
  hideRequireTls?: boolean;
  /**
   * A smarthost: AUTH with these credentials is needed before MAIL (530 otherwise), offered
   * with `methods` (default PLAIN and LOGIN), over TLS only unless `allowInsecure`.
   */
  auth?: { user: string; password: string; methods?: ('PLAIN' | 'LOGIN')[]; allowInsecure?: boolean };
  /** "127.0.0.1:PORT": the DNS server mailauth verifies every message against. */
  dnsServer?: string;
  script?: DestinationScript;
  /** Advertised SIZE; larger messages are refused with 552. */
  size?: number;
}

type Connection = SMTPServer['connections'] extends Set<infer C> ? C : never;

const ENHANCED_CODE = /^[245]\.\d{1,3}\.\d{1,3}(?:\s|$)/;

/**
 * smtp-server with two per-connection adjustments that its options cannot express.
 * Both touch smtp-server internals (checked against 3.21.6); the destination tests pin
 * the wire behaviour, so a change in those internals fails them rather than going unseen.
 */
class ProviderServer extends SMTPServer {
  /** Sees every accepted TCP socket before smtp-server reads from it. */
  tap: (socket: net.Socket) => void = () => undefined;

  override connect(...args: Parameters<SMTPServer['connect']>): void {
    this.tap(args[0] as net.Socket);
    super.connect(...args);
    // connect() adds the new connection last and synchronously, Sets keep insertion order.
    const connection = [...this.connections].at(-1);
    if (!connection) return;

    // With hideENHANCEDSTATUSCODES false, send() prefixes every reply with an enhanced code
    // derived from the reply code alone, even when the text already carries the one the
    // script chose ("550 5.1.1 5.1.1 The account…"). A handler error cannot pass send()'s
    // `context` argument, so when the text has its own code, turn the automatic one off.
    const send = connection.send;
    connection.send = (code, data, context) =>
      send.call(connection, code, data, typeof data === 'string' && ENHANCED_CODE.test(data) ? false : context);

    // init() holds the greeting back for a fixed 100 ms to catch early talkers, with no
    // option to turn it off; every upstream session in the tests would pay for it. Greet
    // now, and make the timer's later call a no-op.
    const ready = connection.connectionReady;
    connection.connectionReady = () => undefined;
    ready.call(connection);
  }
}

interface Waiter {
  count: number;
  resolve: (messages: ReceivedMessage[]) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

export class Destination {
  readonly host: string;
  readonly port: number;
  readonly name: string;
  readonly received: ReceivedMessage[] = [];
  /** Every MAIL FROM address the destination was sent, accepted or not. */
  readonly mailFroms: string[] = [];
  /** Every AUTH attempt: the user name and whether it was accepted. */
  readonly authAttempts: { user: string; method: string; accepted: boolean; secure: boolean }[] = [];
  /** Read at every command, so a test may replace it between sends. */
  script: DestinationScript;

  #server: ProviderServer;
  #resolver: DNSResolver | undefined;
  #connections = 0;
  #tlsProtocols = new Map<string, string>();
  #waiters = new Set<Waiter>();
  #wire: Buffer[] = [];
  #closing: Promise<void> | undefined;

  private constructor(
    server: ProviderServer,
    fields: { host: string; port: number; name: string; script: DestinationScript; resolver: DNSResolver | undefined },
  ) {
    this.#server = server;
    this.host = fields.host;
    this.port = fields.port;
    this.name = fields.name;
    this.script = fields.script;
    this.#resolver = fields.resolver;
  }

  /**
   * Every byte clients sent on their TCP connections, as latin1 text. Once STARTTLS is up
   * the TLS layer reads the socket instead, so this is what crossed the wire in the clear,
   * and a client's MAIL FROM shows here only if it was sent without TLS.
   */
  get wire(): string {
    return Buffer.concat(this.#wire).toString('latin1');
  }

  /** How many client connections it accepted. */
  get connections(): number {
    return this.#connections;
  }

  static async start(options: DestinationOptions): Promise<Destination> {
    if (!isLoopback(options.host)) throw new Error(`Destination must listen on loopback, not ${options.host}`);
    const name = options.name ?? 'mx.test';
    const starttls = options.starttls ?? true;
    const certificate = starttls ? await testCertificate(options.certificateNames ?? [name, options.host]) : undefined;
    const auth = options.auth;

    // The handlers need the instance, which needs the server: late-bound through `self`.
    let self: Destination | undefined;
    const instance = (): Destination => {
      if (!self) throw new Error('Destination not started');
      return self;
    };
    const serverOptions: SMTPServerOptions = {
      name,
      logger: false,
      // A provider's MX has no AUTH on port 25 and looks nobody up before greeting; a smarthost
      // wants AUTH before MAIL.
      authOptional: !auth,
      disabledCommands: [...(auth ? [] : ['AUTH']), ...(starttls ? [] : ['STARTTLS'])],
      ...(auth ? { authMethods: auth.methods ?? ['PLAIN', 'LOGIN'], allowInsecureAuth: auth.allowInsecure ?? false } : {}),
      hideREQUIRETLS: options.hideRequireTls ?? false,
      onAuth: (attempt, session, callback) => {
        const accepted = !!auth && attempt.username === auth.user && attempt.password === auth.password;
        instance().authAttempts.push({ user: attempt.username ?? '', method: attempt.method, accepted, secure: session.secure });
        if (accepted) callback(null, { user: attempt.username });
        else callback(Object.assign(new Error('5.7.8 Error: authentication failed: Invalid username or password'), { responseCode: 535 }));
      },
      disableReverseLookup: true,
      hideENHANCEDSTATUSCODES: false,
      ...(certificate ? { key: certificate.key, cert: certificate.cert } : {}),
      ...(options.size !== undefined ? { size: options.size, rejectOversized: true } : {}),
      onConnect: (session, callback) => instance().#onConnect(session, callback),
      onSecure: (socket, session, callback) => instance().#onSecure(socket, session, callback),
      onClose: (session) => instance().#tlsProtocols.delete(session.id),
      onMailFrom: (address, _session, callback) => {
        instance().mailFroms.push(address.address);
        callback(replyError(instance().#run(() => instance().script.mailFrom?.(address.address))));
      },
      onRcptTo: (address, session, callback) => {
        if (instance().script.dropAtRcpt?.(address.address)) {
          // The callback stays uncalled, as for dropMidData: nobody is left to answer.
          instance().#connection(session.id)?._socket.destroy();
          return;
        }
        callback(replyError(instance().#run(() => instance().script.rcptTo?.(address.address))));
      },
      onData: (stream, session, callback) => instance().#onData(stream, session, callback),
    };
    const server = new ProviderServer(serverOptions);
    server.tap = (socket) => socket.on('data', (chunk: Buffer) => instance().#wire.push(chunk));
    // Clients vanishing mid-transaction (the relay under test, dropMidData) surface here;
    // without a listener they would crash the test process.
    server.on('error', () => undefined);

    await new Promise<void>((resolve, reject) => {
      server.server.once('error', reject);
      server.listen(options.port ?? 0, options.host, () => {
        server.server.off('error', reject);
        resolve();
      });
    });
    const address = server.server.address();
    if (address === null || typeof address === 'string') throw new Error('Destination: no TCP address');
    self = new Destination(server, {
      host: options.host,
      port: address.port,
      name,
      script: options.script ?? {},
      resolver: options.dnsServer === undefined ? undefined : mailauthResolver(options.dnsServer),
    });
    return self;
  }

  /** Resolves with every message received so far once there are at least `count`. */
  waitForMessages(count: number, timeoutMs = 10_000): Promise<ReceivedMessage[]> {
    if (this.received.length >= count) return Promise.resolve([...this.received]);
    if (this.#closing) return Promise.reject(new Error(`Destination ${this.host} is closed`));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        count,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#waiters.delete(waiter);
          reject(
            new Error(
              `Destination ${this.host}: ${this.received.length} of ${count} messages after ${timeoutMs} ms ` +
                `(${this.#connections} connections)`,
            ),
          );
        }, timeoutMs),
      };
      this.#waiters.add(waiter);
    });
  }

  /** Drops every open connection without a word, as a server ending idle sessions. */
  dropConnections(): void {
    for (const connection of this.#server.connections) connection._socket.destroy();
  }

  close(): Promise<void> {
    this.#closing ??= new Promise<void>((resolve) => {
      for (const waiter of this.#waiters) {
        clearTimeout(waiter.timer);
        waiter.reject(new Error(`Destination ${this.host} closed while waiting for ${waiter.count} messages`));
      }
      this.#waiters.clear();
      // smtp-server would give open sessions 30 s to finish; a test's destination has
      // nothing worth waiting for.
      this.#server.close(() => resolve());
      for (const connection of this.#server.connections) connection._socket.destroy();
    });
    return this.#closing;
  }

  #onConnect(_session: SMTPServerSession, callback: (error?: Error | null) => void): void {
    this.#connections += 1;
    callback(replyError(this.#run(() => this.script.connect?.())));
  }

  #onSecure(socket: net.Socket | TLSSocket, session: SMTPServerSession, callback: (error?: Error | null) => void): void {
    const protocol = 'getProtocol' in socket ? socket.getProtocol() : null;
    if (protocol) this.#tlsProtocols.set(session.id, protocol);
    callback();
  }

  #onData(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    callback: (error?: Error | null, message?: string) => void,
  ): void {
    // The session object is reset for the next transaction once the reply is sent.
    const envelope: Envelope = {
      mailFrom: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
      rcptTo: session.envelope.rcptTo.map((rcpt) => rcpt.address),
      // smtp-server records it; @types/smtp-server does not know the field yet.
      ...((session.envelope as { requireTLS?: boolean }).requireTLS === true ? { requireTls: true } : {}),
    };
    const base = {
      clientAddress: session.remoteAddress,
      helo: session.hostNameAppearsAs,
      secure: session.secure,
      tlsProtocol: this.#tlsProtocols.get(session.id),
      envelope,
      connectionId: session.id,
      // smtp-server leaves `user` false, not undefined, when nobody authenticated.
      ...(session.user ? { user: String(session.user) } : {}),
    };
    // smtp-server destroys the stream when the client goes away; a listener keeps that quiet.
    stream.on('error', () => undefined);

    const drop = this.script.dropMidData;
    if (typeof drop === 'function' ? drop() : drop) {
      stream.once('data', () => {
        const connection = this.#connection(session.id);
        if (connection) connection._socket.destroy();
      });
      // The callback stays uncalled: the connection is gone and there is nobody to answer.
      return;
    }

    const chunks: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('end', () => {
      const message = Buffer.concat(chunks);
      if (stream.sizeExceeded) {
        // rejectOversized makes smtp-server answer 552 whatever is passed here.
        callback(new Error('message too big'));
        return;
      }
      this.#verdict(message, base.clientAddress, base.helo, envelope.mailFrom).then(
        (verdict) => {
          const reply = this.#run(() => this.script.data?.(message, envelope));
          const error = replyError(reply);
          if (error) {
            callback(error);
            return;
          }
          this.#record({ ...base, message, ...(verdict ? { verdict } : {}) });
          callback(null, reply?.message);
        },
        (error: unknown) => {
          // A receiver whose checks fail says so with a temporary error, as a real MX would.
          callback(replyError({ code: 451, message: `4.7.0 Authentication checks failed: ${String(error)}` }));
        },
      );
    });
  }

  async #verdict(message: Buffer, ip: string, helo: string, sender: string): Promise<AuthVerdict | undefined> {
    if (!this.#resolver) return undefined;
    const result = await authenticate(message, { ip, helo, sender, mta: this.name, resolver: this.#resolver });
    return {
      spf: result.spf ? result.spf.status.result : 'none',
      // mailauth reports an unsigned message as one result "none" without a signing domain.
      dkim: result.dkim.results
        .filter((entry) => entry.signingDomain !== undefined || entry.status.result !== 'none')
        .map((entry) => entry.status.result),
      dmarc: result.dmarc ? result.dmarc.status.result : 'none',
      ...(result.dkim.headerFrom.length > 0 ? { headerFrom: result.dkim.headerFrom[0] } : {}),
      raw: result,
    };
  }

  /** A script that throws is a test bug; answer 451 rather than crash inside smtp-server. */
  #run(hook: () => ScriptedReply | undefined): ScriptedReply | undefined {
    try {
      return hook();
    } catch (error) {
      return { code: 451, message: `4.3.0 Destination script threw: ${String(error)}` };
    }
  }

  #record(message: ReceivedMessage): void {
    this.received.push(message);
    for (const waiter of this.#waiters) {
      if (this.received.length < waiter.count) continue;
      clearTimeout(waiter.timer);
      this.#waiters.delete(waiter);
      waiter.resolve([...this.received]);
    }
  }

  #connection(id: string): Connection | undefined {
    for (const connection of this.#server.connections) if (connection.id === id) return connection;
    return undefined;
  }
}

function replyError(reply: ScriptedReply | undefined): Error | null {
  if (!reply || reply.code < 400) return null;
  return Object.assign(new Error(reply.message), { responseCode: reply.code });
}

function isLoopback(host: string): boolean {
  return (net.isIPv4(host) && host.startsWith('127.')) || host === '::1';
}

/** Same contract as `dns.promises.resolve(name, rrtype)`, against the test DNS server only. */
function mailauthResolver(server: string): DNSResolver {
  const resolver = new dnsPromises.Resolver({ timeout: 1000, tries: 1 });
  resolver.setServers([server]);
  const lookup = (name: string, rrtype: string): Promise<unknown> => {
    switch (rrtype) {
      case 'A':
        return resolver.resolve4(name);
      case 'AAAA':
        return resolver.resolve6(name);
      case 'MX':
        return resolver.resolveMx(name);
      case 'TXT':
        return resolver.resolveTxt(name);
      case 'CNAME':
        return resolver.resolveCname(name);
      case 'NS':
        return resolver.resolveNs(name);
      // mailauth asks for PTR by the in-addr.arpa name, so this is resolvePtr, not reverse(ip).
      case 'PTR':
        return resolver.resolvePtr(name);
      default:
        return resolver.resolve(name, rrtype);
    }
  };
  // mailauth's DNSResolver type says string[] | string[][], yet its MX lookups read the
  // { exchange, priority } records dns.promises returns.
  return lookup as DNSResolver;
}
