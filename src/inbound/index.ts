import { setTimeout as delay } from 'node:timers/promises';
import type { AddressInfo } from 'node:net';
import { domainToASCII } from 'node:url';
import { RateLimiterMemory, type RateLimiterAbstract } from 'rate-limiter-flexible';
import { SMTPServer, type SMTPServerSession } from 'smtp-server';
import { readTlsFiles, type Config, type ListenerConfig } from '../config/index.ts';
import type { EgressPool } from '../identity/index.ts';
import { Counter, Gauge, METRIC_PREFIX, type Logger } from '../observability/index.ts';
import type { SpfVerdict } from '../auth/index.ts';
import { AbuseGuard, type Sender } from '../abuse/index.ts';
import { DEFAULT_MEMO_PATH, RefusalLog, Transaction, senderDomainAllowed, type PolicyReason, type RelayContext } from '../proxy/index.ts';
import { failure, toSmtpError, type Outcome } from '../smtp/index.ts';
import { ClientAuthorization } from './authorization.ts';
import { AuthLimits } from './auth-limits.ts';
import type { LimiterOptions } from '../redis/index.ts';
import { ConnectionSlots, connectionCeiling, type Slots } from './slots.ts';
import { adoptListener, drainListener, endSessionById, type Drained } from './smtp-server-fixes.ts';

export { hashPassword, verifyPassword } from './passwords.ts';
export { ConnectionSlots, type Slots } from './slots.ts';
export type { LimiterOptions } from '../redis/index.ts';
export type { Drained } from './smtp-server-fixes.ts';

/**
 * Where the listeners' connection slots, and the AUTH failure counts without `limits.redis`,
 * are kept: in this process, or in a worker the supervisor's, which every worker shares.
 */
export interface InboundState {
  /** The slots of the listener at `index` in `listeners`. */
  slots(index: number, limits: Config['limits']): Slots;
  limiter(options: LimiterOptions): RateLimiterAbstract;
}

const IN_PROCESS: InboundState = { slots: (_, limits) => new ConnectionSlots(limits), limiter: (options) => new RateLimiterMemory(options) };

type Callback = (err?: Error | null) => void;

const MAX_AUTH_FAILURES = 3;

/** How long a drain waits, past shutdownTimeout, for the deliveries of the sessions it cut. */
const CUT_DELIVERY_WAIT_MS = 10_000;

/** A listener whose address is taken (the old process still draining) or not yet on the host is tried again this often. */
const BIND_RETRY_MS = 1000;

/** Every listener of the process, for the gauge of open connections. */
const servers = new Set<SMTPServer>();
new Gauge({
  name: `${METRIC_PREFIX}client_connections`,
  help: 'Client SMTP connections open now, on every listener',
  collect() {
    let open = 0;
    for (const server of servers) open += (server as unknown as { connections: Set<unknown> }).connections.size;
    this.set(open);
  },
});
const connectionsRefused = new Counter({
  name: `${METRIC_PREFIX}client_connections_refused_total`,
  help: 'Client sessions the listener itself ended with an error reply, by reason: too_many_clients (trusted slots full), strangers (the budget of addresses outside the trusted networks), timeout (no complete command in time), session_time, early_talker (spoke before the greeting), shutting_down, protocol (anything else)',
  labelNames: ['reason'],
});
const authFailures = new Counter({
  name: `${METRIC_PREFIX}auth_failures_total`,
  help: 'AUTH attempts refused: wrong user name or password',
});

/** A bounded name for a session refusal smtp-server wrote itself. */
function sessionRefusalReason(reply: string): string {
  if (/too many connected clients/i.test(reply)) return 'too_many_clients';
  if (/too many connections from outside/i.test(reply)) return 'strangers';
  if (/session longer than|authenticate within/i.test(reply)) return 'session_time';
  if (/timeout/i.test(reply)) return 'timeout';
  if (/talk too soon/i.test(reply)) return 'early_talker';
  if (/shutting down/i.test(reply)) return 'shutting_down';
  return 'protocol';
}

function bindRetryable(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'EADDRINUSE' || code === 'EADDRNOTAVAIL';
}

/**
 * smtp-server hands over internationalized domains in Unicode; DNS and destinations without
 * SMTPUTF8 need the A-label form (RFC 5890), so that is what the relay routes and forwards.
 */
function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1);
}

function asciiDomain(address: string): string | undefined {
  const at = address.lastIndexOf('@');
  if (at < 0) return address;
  const domain = domainToASCII(address.slice(at + 1));
  return domain ? `${address.slice(0, at)}@${domain}` : undefined;
}

function reject(outcome: Outcome, callback: Callback): void {
  callback(outcome.kind === 'accepted' ? null : toSmtpError(outcome.reply));
}

/** A fault of the relay itself is never the client's permanent failure: it retries. */
function localError(logger: Logger, callback: Callback) {
  return (err: Error) => {
    logger.error({ err }, 'unexpected error in the transaction');
    callback(toSmtpError(failure('temporary', 451, '4.3.0', 'local error in processing; try again later').reply));
  };
}

export interface Listening {
  listener: ListenerConfig;
  port: number;
  server: SMTPServer;
}

/**
 * The SMTP side that internal servers talk to: one smtp-server per configured listener,
 * each command handed to the client's current proxy transaction.
 */
export class Inbound {
  #ctx: RelayContext;
  #egress: EgressPool;
  #logger: Logger;
  #clients: ClientAuthorization;
  #transactions = new Map<string, Transaction>();
  #authFailures = new Map<string, number>();
  /** Sessions whose command handler is answering right now, and the reply it wrote. */
  #claimed = new Set<string>();
  #written = new Map<string, string>();
  #refusals: RefusalLog;
  #servers: Listening[] = [];
  /** Listeners still waiting for their address, and the timer of their next attempt. */
  #unbound = new Map<SMTPServer, { listener: ListenerConfig; error: string; timer?: NodeJS.Timeout }>();
  /** Strangers' sessions that must authenticate before their timer fires. */
  #strangerTimers = new Map<string, NodeJS.Timeout>();
  #authLimits: AuthLimits;
  #abuse: AbuseGuard;
  /** Each transaction's sender as MAIL FROM gave it (the session's envelope changes with the next MAIL). */
  #senders = new WeakMap<Transaction, Sender>();
  #state: InboundState;
  #draining = false;
  /** Messages being delivered: a drain waits for those of sessions it cut, so the memo records what arrived. */
  #deliveries = new Set<Promise<Outcome>>();

  constructor(ctx: RelayContext, egress: EgressPool, state: InboundState = IN_PROCESS) {
    this.#ctx = ctx;
    this.#egress = egress;
    this.#state = state;
    this.#logger = ctx.logger.child({ component: 'inbound' });
    this.#clients = new ClientAuthorization(ctx.config.clients);
    this.#refusals = new RefusalLog(ctx.logger.child({ component: 'inbound' }));
    this.#authLimits = new AuthLimits(ctx.config.limits, this.#logger, state.limiter);
    this.#abuse = new AbuseGuard(ctx.config, DEFAULT_MEMO_PATH, this.#logger, state.limiter);
  }

  /** Settles once the shared AUTH failure counts and sending limits connected, or failed to. */
  async ready(): Promise<void> {
    await Promise.all([this.#authLimits.ready, this.#abuse.ready]);
  }

  /** New transactions use the new context (config, keys, clients); those in flight keep theirs. */
  update(ctx: RelayContext): void {
    this.#ctx = ctx;
    this.#clients = new ClientAuthorization(ctx.config.clients);
    this.#abuse.configure(ctx.config.abuse);
  }

  /** The abuse guard's holds, for `hygiene-relay abuse list | release`. */
  get abuse(): Pick<AbuseGuard, 'holds' | 'release'> {
    return this.#abuse;
  }

  get listening(): readonly Listening[] {
    return this.#servers;
  }

  /** Listeners that could not bind yet, as `host:port: why`: the relay is not ready while there is one. */
  get unbound(): string[] {
    return [...this.#unbound.values()].map(({ listener, error }) => `listener ${listener.host}:${listener.port} not bound: ${error}`);
  }

  /**
   * Binds every listener. An address in use or not on the host yet (a rolling restart, a
   * floating IP) is tried again every second while the relay reports itself unready; any
   * other failure (no permission for the port, a host that is no address) is a start-up error.
   */
  async listen(): Promise<void> {
    const { config } = this.#ctx;
    const tls = config.tls ? readTlsFiles(config.tls) : undefined;
    for (const warning of tls?.warnings ?? []) this.#logger.warn({ warning }, 'TLS warning');
    for (const [index, listener] of config.listeners.entries()) {
      const server = this.#createServer(listener, this.#state.slots(index, config.limits), config, tls?.credentials);
      adoptListener(server, (connection, reply) => this.#heard(connection, reply), {
        command: config.limits.clientTimeout,
        session: config.limits.maxSessionTime,
        greetAtOnce: (address) => this.#clients.client(address, undefined) !== undefined,
      });
      servers.add(server);
      try {
        await this.#bind(server, listener);
      } catch (err) {
        if (!bindRetryable(err)) throw err;
        this.#logger.error({ host: listener.host, port: listener.port, error: (err as Error).message }, `listener cannot bind; trying again every ${BIND_RETRY_MS / 1000} s (unready until it binds)`);
        this.#unbound.set(server, { listener, error: (err as Error).message });
        this.#retry(server, listener);
      }
    }
  }

  #retry(server: SMTPServer, listener: ListenerConfig): void {
    const waiting = this.#unbound.get(server)!;
    waiting.timer = setTimeout(() => {
      this.#bind(server, listener).then(
        () => this.#unbound.delete(server),
        (err: Error) => {
          waiting.error = err.message;
          this.#retry(server, listener);
        },
      );
    }, BIND_RETRY_MS);
  }

  async #bind(server: SMTPServer, listener: ListenerConfig): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(listener.port, listener.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.#logger.error({ err }, 'listener error'));
    const port = (server.server.address() as AddressInfo).port;
    this.#servers.push({ listener, port, server });
    this.#logger.info({ host: listener.host, port, starttls: listener.starttls, implicitTls: listener.implicitTls, proxyProtocol: listener.proxyProtocol }, 'listening');
  }

  /**
   * SIGTERM: accepts no more connections, ends idle sessions at once and every other one
   * with `421 4.3.2` once its transaction is over (smtp-server-fixes.ts); after `timeout`
   * the sessions still open are cut.
   */
  async drain(timeout: number): Promise<Drained> {
    this.#draining = true;
    for (const [server, { timer }] of this.#unbound) {
      clearTimeout(timer);
      servers.delete(server);
    }
    this.#unbound.clear();
    const drained = await Promise.all(this.#servers.map(({ server }) => drainListener(server, timeout)));
    // A session cut at the deadline may have its message on the way to a destination still:
    // what that one accepts goes into the memo, so the client's retry does not bring it twice.
    if (this.#deliveries.size) await Promise.race([Promise.allSettled([...this.#deliveries]), delay(CUT_DELIVERY_WAIT_MS, undefined, { ref: false })]);
    for (const { server } of this.#servers) servers.delete(server);
    this.#servers = [];
    this.#refusals.close();
    this.#authLimits.close();
    this.#abuse.close();
    return { idle: drained.reduce((sum, d) => sum + d.idle, 0), cut: drained.reduce((sum, d) => sum + d.cut, 0) };
  }

  get draining(): boolean {
    return this.#draining;
  }

  #createServer(listener: ListenerConfig, slots: Slots, config: Config, tls: { key: Buffer; cert: Buffer } | undefined): SMTPServer {
    const usesTls = listener.starttls || listener.implicitTls;
    const disabled = [...(usesTls ? [] : ['STARTTLS']), ...(this.#clients.hasUsers ? [] : ['AUTH'])];
    const server: SMTPServer = new SMTPServer({
      // Replies still owed after the client's FIN are written (smtp-server-fixes.ts).
      allowHalfOpen: true,
      name: this.#egress.select()?.helo,
      banner: 'hygiene-relay ESMTP',
      secure: listener.implicitTls,
      ...(usesTls ? tls : {}),
      disabledCommands: disabled,
      allowInsecureAuth: listener.allowInsecureAuth,
      authOptional: true,
      authMethods: ['PLAIN', 'LOGIN'],
      size: config.limits.maxMessageSize,
      // The hard ceiling; `slots` shares it out between the relay's clients and strangers.
      maxClients: connectionCeiling(config.limits),
      // Only the listed load balancers may say who the client is; anyone else could claim a trusted network.
      useProxy: listener.proxyProtocol.length ? listener.proxyProtocol : false,
      // The client's PTR is not needed to relay, and a lookup would bypass the configured resolver.
      disableReverseLookup: true,
      socketTimeout: config.limits.clientTimeout,
      hideENHANCEDSTATUSCODES: false,
      // RFC 8689: offered over TLS; a transaction that asks for it goes on only over verified
      // TLS to hosts that take it on (delivery/connect.ts), or is refused with 5.7.30.
      hideREQUIRETLS: false,
      logger: false,
      onConnect: (session, callback) => {
        const trusted = this.#clients.client(session.remoteAddress, undefined) !== undefined;
        // Set before the slot is known, which a worker asks its supervisor for: a client that
        // leaves meanwhile finds its timer here for onClose to clear.
        if (!trusted) {
          const { sessionTime } = config.limits.strangers;
          const timer = setTimeout(
            () => endSessionById(server, session.id, `4.7.0 Authenticate within ${sessionTime / 1000} s or leave: ${session.remoteAddress} is not in a trusted network`),
            sessionTime,
          ).unref();
          this.#strangerTimers.set(session.id, timer);
        }
        void Promise.resolve(slots.admit(session.id, session.remoteAddress, trusted)).then(
          (refused) => (refused ? reject(refused, callback) : callback()),
          (err: Error) => {
            this.#logger.error({ err }, 'connection slots did not answer');
            reject(failure('temporary', 421, '4.3.0', 'local error in processing; try again in a moment'), callback);
          },
        );
      },
      onAuth: (auth, session, callback) => {
        const user = auth.username ?? '';
        const address = session.remoteAddress;
        const attempt = async () => {
          // Blocked: the same answer whichever limit it is, the right password too, and no scrypt run.
          if (await this.#authLimits.blocked(address, user)) return 'blocked' as const;
          const found = await this.#clients.authenticate(user, auth.password ?? '');
          if (!found) await this.#authLimits.failed(address, user);
          return found;
        };
        attempt().then(
          (found) => {
            if (found === 'blocked') {
              const reply = this.#answer(session.id, () => callback(Object.assign(new Error('4.7.0 Too many failed authentication attempts; try again later'), { responseCode: 454 })));
              this.#refusals.refused({ client: address, stage: 'AUTH', user, reply, reason: 'authentication blocked after repeated failures' });
              return;
            }
            if (found) {
              slots.promote(session.id);
              clearTimeout(this.#strangerTimers.get(session.id));
              this.#strangerTimers.delete(session.id);
              return callback(null, { user: found.name });
            }
            authFailures.inc();
            const failures = (this.#authFailures.get(session.id) ?? 0) + 1;
            this.#authFailures.set(session.id, failures);
            // Each attempt costs an scrypt run: a client guessing passwords gets a few, then the door.
            const error =
              failures >= MAX_AUTH_FAILURES
                ? Object.assign(new Error('4.7.0 Too many authentication failures, closing connection'), { responseCode: 421 })
                : Object.assign(new Error('5.7.8 Authentication credentials invalid'), { responseCode: 535 });
            const reply = this.#answer(session.id, () => callback(error));
            // The user name, never the password.
            this.#refusals.refused({ client: session.remoteAddress, stage: 'AUTH', user, reply, reason: `authentication failed (${failures} of ${MAX_AUTH_FAILURES} attempts)` });
          },
          (err: Error) => {
            // The cause is the relay's (Redis, the supervisor): logged, not told to the client.
            this.#logger.error({ err, client: address, user }, 'AUTH could not be checked');
            const reply = this.#answer(session.id, () => callback(Object.assign(new Error('4.7.0 Temporary authentication failure; try again later'), { responseCode: 454 })));
            this.#refusals.refused({ client: address, stage: 'AUTH', user, reply, reason: `authentication could not be checked: ${err.message}` });
          },
        );
      },
      onMailFrom: (address, session, callback) => {
        void this.#mailFrom(address.address, address.args, session).then(({ outcome, spf, trusted, policy }) => {
          const reply = this.#answer(session.id, () => reject(outcome, callback));
          if (outcome.kind === 'accepted') return;
          const user = session.user ? String(session.user) : undefined;
          this.#refusals.refused({ client: session.remoteAddress, stage: 'MAIL FROM', helo: session.hostNameAppearsAs || undefined, user, sender: address.address, reply, reason: outcome.cause, spf, trusted, policy });
        }, localError(this.#logger, callback));
      },
      onRcptTo: (address, session, callback) => {
        void this.#rcptTo(address.address, session).then(({ outcome, transaction }) => {
          const reply = this.#answer(session.id, () => reject(outcome, callback));
          // A recipient the transaction took up is in its record; one refused before, here.
          if (transaction) transaction.answered(reply);
          else if (outcome.kind !== 'accepted') this.#refusals.refused({ client: session.remoteAddress, stage: 'RCPT TO', sender: session.envelope.mailFrom ? session.envelope.mailFrom.address : undefined, reply, reason: outcome.cause });
        }, (err: Error) => {
          const reply = this.#answer(session.id, () => localError(this.#logger, callback)(err));
          this.#transactions.get(session.id)?.answered(reply);
        });
      },
      onData: (stream, session, callback) => {
        const transaction = this.#transactions.get(session.id);
        if (!transaction) {
          stream.resume();
          return callback(toSmtpError(failure('temporary', 451, '4.3.0', 'transaction state lost').reply));
        }
        const delivering = transaction.deliver(stream);
        this.#deliveries.add(delivering);
        void delivering.finally(() => this.#deliveries.delete(delivering)).catch(() => undefined);
        void delivering.then(
          (outcome) => {
            this.#transactions.delete(session.id);
            // The reply names its own enhanced code (smtp-server-fixes.ts keeps it): the client gets exactly the outcome.
            const reply = this.#answer(session.id, () => (outcome.kind === 'accepted' ? callback(null, `${outcome.reply.enhanced} ${outcome.reply.lines.join(' ')}`) : callback(toSmtpError(outcome.reply))));
            transaction.finish(reply);
          },
          (err: Error) => {
            this.#transactions.delete(session.id);
            const reply = this.#answer(session.id, () => localError(this.#logger, callback)(err));
            transaction.finish(reply);
          },
        );
      },
      onClose: (session) => {
        slots.release(session.id);
        clearTimeout(this.#strangerTimers.get(session.id));
        this.#strangerTimers.delete(session.id);
        this.#authFailures.delete(session.id);
        const transaction = this.#transactions.get(session.id);
        this.#transactions.delete(session.id);
        void transaction?.abort('the client closed the connection');
      },
    });
    return server;
  }

  /**
   * Runs smtp-server's callback for a command and returns the reply it wrote, exactly as
   * written (smtp-server writes it within the callback); undefined when none could be written.
   */
  #answer(session: string, respond: () => void): string | undefined {
    this.#claimed.add(session);
    try {
      respond();
    } finally {
      this.#claimed.delete(session);
    }
    const reply = this.#written.get(session);
    this.#written.delete(session);
    return reply;
  }

  /** Every reply a listener writes: a command handler's is claimed; smtp-server's own refusals are records. */
  #heard(connection: { id: string; remoteAddress: string }, reply: string): void {
    if (this.#claimed.has(connection.id)) {
      this.#written.set(connection.id, reply);
      return;
    }
    // Too many clients, a command out of order or unknown (a PROXY header from a stranger), a timeout.
    if (Number(reply.slice(0, 3)) < 400) return;
    const reason = sessionRefusalReason(reply);
    connectionsRefused.inc({ reason });
    // The drain ends every session so; the "stopped" record counts them.
    if (reason !== 'shutting_down') this.#refusals.refused({ client: connection.remoteAddress, stage: 'session', reply, reason: reply.replace(/^\d{3}[ -](\d\.\d+\.\d+ )?/, '') });
  }

  async #mailFrom(address: string, args: unknown, session: SMTPServerSession): Promise<{ outcome: Outcome; spf?: SpfVerdict; trusted?: boolean; policy?: PolicyReason }> {
    const refuse = (outcome: Outcome, policy?: PolicyReason) => ({ outcome, policy });
    const trustedRefusal = (outcome: Outcome, policy?: PolicyReason) => ({ outcome, trusted: true, policy });
    const sender = asciiDomain(address);
    if (sender === undefined) return refuse(failure('permanent', 553, '5.1.7', `<${address}>: the domain is not a valid domain name`));
    const previous = this.#transactions.get(session.id);
    if (previous) {
      this.#transactions.delete(session.id);
      await previous.abort('the client started a new transaction');
    }
    // smtp-server sets `user` to false (not undefined) once STARTTLS resets the session: only
    // a non-empty value means the client authenticated.
    const client = this.#clients.client(session.remoteAddress, session.user ? String(session.user) : undefined);
    if (!client) {
      return refuse(
        this.#clients.hasUsers
          ? failure('permanent', 530, '5.7.0', `authentication required: ${session.remoteAddress} is not in a trusted network`)
          : failure('permanent', 550, '5.7.1', `relaying denied: ${session.remoteAddress} is not in a trusted network`),
        'untrusted_client',
      );
    }
    // A null sender (a bounce from the internal server) has no domain to check.
    if (sender !== '' && !senderDomainAllowed(client.senderDomains, domainOf(sender))) {
      return trustedRefusal(failure('permanent', 550, '5.7.1', `${client.user ? `user ${client.user}` : session.remoteAddress} may not send as <${sender}>`), 'sender_domain');
    }
    const egress = this.#egress.select();
    if (!egress) {
      return trustedRefusal(failure('temporary', 451, '4.3.5', 'no egress identity verifies (needed in strict mode, and always for an IPv6 one): check the PTR and A/AAAA records of the egress addresses'));
    }
    const params = (args || {}) as Record<string, string | boolean>;
    // Who sends, as the abuse guard counts it: the sender with its domain in ASCII, as every other check has it.
    const from: Sender = { user: session.user ? String(session.user) : undefined, address: session.remoteAddress, sender };
    const transaction = new Transaction(
      this.#ctx,
      { address: session.remoteAddress, helo: session.hostNameAppearsAs, user: client.user, secure: session.secure, senderDomains: client.senderDomains },
      sender,
      {
        size: params.SIZE ? Number(params.SIZE) : undefined,
        body: typeof params.BODY === 'string' ? params.BODY.toUpperCase() : undefined,
        smtputf8: Boolean(params.SMTPUTF8),
        // smtp-server offers REQUIRETLS only over TLS and refuses it otherwise. RFC 8689 §4.2.1
        // applies it to mail with a return path: a bounce carries no such requirement.
        requireTls: params.REQUIRETLS === true && sender !== '',
      },
      egress,
      (refusals) => this.#abuse.refused(from, refusals),
    );
    this.#senders.set(transaction, from);
    const outcome = await transaction.checkSender();
    if (outcome.kind !== 'accepted') {
      await transaction.discard();
      return { outcome, spf: transaction.spf, trusted: true, policy: outcome.kind === 'permanent' ? 'spf' : undefined };
    }
    this.#transactions.set(session.id, transaction);
    return { outcome };
  }

  /** The outcome, and the transaction when it took the recipient up (it records it then). */
  async #rcptTo(address: string, session: SMTPServerSession): Promise<{ outcome: Outcome; transaction?: Transaction }> {
    const transaction = this.#transactions.get(session.id);
    // smtp-server already answers RCPT before MAIL; without a transaction here the relay lost it.
    if (!transaction) return { outcome: failure('temporary', 451, '4.3.0', 'transaction state lost; start again with MAIL') };
    const recipient = asciiDomain(address);
    if (recipient === undefined) return { outcome: failure('permanent', 553, '5.1.3', `<${address}>: the domain is not a valid domain name`) };
    // RFC 5321 §4.5.3.1.10: too many recipients → 452; the client sends the rest in another transaction.
    if (session.envelope.rcptTo.length >= this.#ctx.config.limits.maxRecipients) {
      return { outcome: failure('temporary', 452, '4.5.3', `too many recipients (at most ${this.#ctx.config.limits.maxRecipients} per message)`) };
    }
    if (!recipient.includes('@')) return { outcome: failure('permanent', 550, '5.1.3', 'recipient must be a full address (user@domain)') };
    const over = await this.#abuse.recipient(this.#senders.get(transaction)!, recipient, transaction);
    if (over) return { outcome: over };
    return { outcome: await transaction.addRecipient(recipient), transaction };
  }
}
