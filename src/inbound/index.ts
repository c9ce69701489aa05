import type { AddressInfo } from 'node:net';
import { domainToASCII } from 'node:url';
import { SMTPServer, type SMTPServerSession } from 'smtp-server';
import { readTlsFiles, type Config, type ListenerConfig } from '../config/index.ts';
import type { EgressPool } from '../identity/index.ts';
import type { Logger } from '../observability/index.ts';
import type { SpfVerdict } from '../auth/index.ts';
import { RefusalLog, Transaction, senderDomainAllowed, type RelayContext } from '../proxy/index.ts';
import { failure, toSmtpError, type Outcome } from '../smtp/index.ts';
import { ClientAuthorization } from './authorization.ts';
import { adoptListener } from './smtp-server-fixes.ts';

export { hashPassword, verifyPassword } from './passwords.ts';

type Callback = (err?: Error | null) => void;

const MAX_AUTH_FAILURES = 3;

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

  constructor(ctx: RelayContext, egress: EgressPool) {
    this.#ctx = ctx;
    this.#egress = egress;
    this.#logger = ctx.logger.child({ component: 'inbound' });
    this.#clients = new ClientAuthorization(ctx.config.clients);
    this.#refusals = new RefusalLog(ctx.logger.child({ component: 'inbound' }));
  }

  /** New transactions use the new context (config, keys, clients); those in flight keep theirs. */
  update(ctx: RelayContext): void {
    this.#ctx = ctx;
    this.#clients = new ClientAuthorization(ctx.config.clients);
  }

  get listening(): readonly Listening[] {
    return this.#servers;
  }

  async listen(): Promise<void> {
    const { config } = this.#ctx;
    const tls = config.tls ? readTlsFiles(config.tls) : undefined;
    for (const warning of tls?.warnings ?? []) this.#logger.warn({ warning }, 'TLS warning');
    for (const listener of config.listeners) {
      const server = this.#createServer(listener, config, tls?.credentials);
      adoptListener(server, (connection, reply) => this.#heard(connection, reply));
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
  }

  /** Stops accepting; transactions in flight finish (smtp-server waits for their connections). */
  async close(): Promise<void> {
    await Promise.all(this.#servers.map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve()))));
    this.#servers = [];
    this.#refusals.close();
  }

  #createServer(listener: ListenerConfig, config: Config, tls: { key: Buffer; cert: Buffer } | undefined): SMTPServer {
    const usesTls = listener.starttls || listener.implicitTls;
    const disabled = [...(usesTls ? [] : ['STARTTLS']), ...(this.#clients.hasUsers ? [] : ['AUTH'])];
    return new SMTPServer({
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
      maxClients: config.limits.maxClients,
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
      onAuth: (auth, session, callback) => {
        const user = auth.username ?? '';
        this.#clients.authenticate(user, auth.password ?? '').then(
          (found) => {
            if (found) return callback(null, { user: found.name });
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
          (err: Error) => callback(Object.assign(new Error(`4.7.0 Temporary authentication failure (${err.message})`), { responseCode: 454 })),
        );
      },
      onMailFrom: (address, session, callback) => {
        void this.#mailFrom(address.address, address.args, session).then(({ outcome, spf, trusted }) => {
          const reply = this.#answer(session.id, () => reject(outcome, callback));
          if (outcome.kind === 'accepted') return;
          const user = session.user ? String(session.user) : undefined;
          this.#refusals.refused({ client: session.remoteAddress, stage: 'MAIL FROM', helo: session.hostNameAppearsAs || undefined, user, sender: address.address, reply, reason: outcome.cause, spf, trusted });
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
        void transaction.deliver(stream).then(
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
        this.#authFailures.delete(session.id);
        const transaction = this.#transactions.get(session.id);
        this.#transactions.delete(session.id);
        void transaction?.abort('the client closed the connection');
      },
    });
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
    if (Number(reply.slice(0, 3)) >= 400) this.#refusals.refused({ client: connection.remoteAddress, stage: 'session', reply, reason: reply.replace(/^\d{3}[ -](\d\.\d+\.\d+ )?/, '') });
  }

  async #mailFrom(address: string, args: unknown, session: SMTPServerSession): Promise<{ outcome: Outcome; spf?: SpfVerdict; trusted?: boolean }> {
    const refuse = (outcome: Outcome) => ({ outcome });
    const trustedRefusal = (outcome: Outcome) => ({ outcome, trusted: true });
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
      );
    }
    // A null sender (a bounce from the internal server) has no domain to check.
    if (sender !== '' && !senderDomainAllowed(client.senderDomains, domainOf(sender))) {
      return trustedRefusal(failure('permanent', 550, '5.7.1', `${client.user ? `user ${client.user}` : session.remoteAddress} may not send as <${sender}>`));
    }
    const egress = this.#egress.select();
    if (!egress) {
      return trustedRefusal(failure('temporary', 451, '4.3.5', 'no egress identity verifies (needed in strict mode, and always for an IPv6 one): check the PTR and A/AAAA records of the egress addresses'));
    }
    const params = (args || {}) as Record<string, string | boolean>;
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
    );
    const outcome = await transaction.checkSender();
    if (outcome.kind !== 'accepted') {
      await transaction.discard();
      return { outcome, spf: transaction.spf, trusted: true };
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
    return { outcome: await transaction.addRecipient(recipient), transaction };
  }
}
