import type { Socket } from 'node:net';
import type { SMTPServer } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { wrapReplyText } from '../smtp/index.ts';

/**
 * Two behaviours of smtp-server (written against WRITTEN_FOR) that the relay's listeners change,
 * through its connection class, and only for the servers passed to `adoptListener`: the
 * simulated destinations of the tests run smtp-server in the same process and keep its
 * own behaviour.
 *
 * 1. smtp-server derives an enhanced status code from the reply code alone (550 → 5.1.1),
 *    which would misreport a destination's `550 5.7.26`. A reply whose text already starts
 *    with an enhanced code (RFC 3463) keeps it, and gets no second one.
 * 2. A client may pipeline QUIT after the end of data and shut its sending side at once
 *    (RFC 2920 §3.1; Exim does), and the server still owes a reply to every command. The
 *    listener keeps half-open sockets (`allowHalfOpen`), but smtp-server writes a reply only
 *    while its socket's readyState is 'open', which a socket whose client sent FIN is not
 *    ('writeOnly'): so such a socket is shown as open for the one write. And the connection
 *    closes once the client's input is over and every command in it has been answered:
 *    smtp-server's parser finishes only after the reply to its last command, and by itself
 *    would leave the socket open until the idle timeout.
 *
 * And a listener hears every reply exactly as it went on the wire (`onReply`), so that what
 * the log says the client was told is what the client was told.
 *
 * 3. smtp-server's idle timeout starts again with every byte, so a client that trickles one a
 *    second holds its connection forever. An adopted listener also gives each command line a
 *    deadline from the reply before it (the per-record deadline of Postfix's smtpd), and each
 *    session a maximum length (`SessionLimits`).
 * 4. smtp-server holds every greeting back 100 ms to catch clients that talk before it (a
 *    spammer's trick); the relay's own clients (`greetAtOnce`: its trusted networks) are
 *    greeted at once, so a printer or an application opening a connection per message is
 *    not held to ten messages a second per connection. Strangers still wait.
 * 5. smtp-server's own close() answers every command with 421 at once, also the DATA of a
 *    transaction half done, and leaves idle sessions open for its 30 s close timeout. A
 *    drained listener (`drainListener`) lets the current transaction finish and then ends
 *    each session, idle ones at once, with `421 4.3.2` (RFC 5321 §3.8: the server may close
 *    with 421 when it must shut down; RFC 3463 X.3.2: system not accepting messages).
 */
/** The smtp-server release whose internals (send, _createParser, readyState) this was written against. */
export const WRITTEN_FOR = '3.21.6';

/**
 * Sees each reply a listener writes, as written (CRLF between the lines of a multi-line
 * reply, none after the last), with the connection's id (the session id) and client address.
 */
export type ReplyObserver = (connection: { id: string; remoteAddress: string }, reply: string) => void;

/** How long a whole command line may take, and a whole session (milliseconds); who is greeted without the early-talker wait. */
export interface SessionLimits {
  command: number;
  session: number;
  greetAtOnce: (address: string) => boolean;
}

const listeners = new WeakMap<SMTPServer, ReplyObserver>();
const limits = new WeakMap<SMTPServer, SessionLimits>();
/** Per connection: the deadline of the command awaited, the session's, and why it must end after the reply it is owed. */
const deadlines = new WeakMap<SMTPConnection, { command?: NodeJS.Timeout; session?: NodeJS.Timeout; ending?: string }>();
const draining = new WeakSet<SMTPServer>();
const SHUTTING_DOWN = '4.3.2 Service shutting down, try again later';
const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3} /;
let installed = false;

export function adoptListener(server: SMTPServer, onReply: ReplyObserver, sessionLimits: SessionLimits): void {
  listeners.set(server, onReply);
  limits.set(server, sessionLimits);
  if (installed) return;
  installed = true;
  const { send, _createParser: createParser, _onCommand: onCommand, _onClose: onClose, init } = SMTPConnection.prototype;
  SMTPConnection.prototype.init = function (this: SMTPConnection) {
    init.call(this);
    const own = limits.get(this._server);
    // A plain socket has run init's checks (maxClients) by now; a TLS one greets after its handshake, as ever.
    if (!own || this.needsUpgrade || this._closing || !own.greetAtOnce(this.remoteAddress)) return;
    const ready = this.connectionReady;
    // The 100 ms timer still fires: its call does nothing now.
    this.connectionReady = () => undefined;
    ready.call(this);
  };
  SMTPConnection.prototype.send = function (this: SMTPConnection, code: number, data?: string | string[], context?: string | false) {
    const onReply = listeners.get(this._server);
    if (!onReply) return send.call(this, code, data, context);
    const own = typeof data === 'string' && ENHANCED.test(data) ? false : context;
    // RFC 5321 §4.5.3.1.5: a reply longer than a line goes out as a multi-line reply.
    if (typeof data === 'string') data = wrapReplyText(data);
    const socket = this._socket;
    const halfClosed = socket.readyState === 'writeOnly';
    if (halfClosed) Object.defineProperty(socket, 'readyState', { value: 'open', configurable: true });
    // send() writes the reply in one call: that call's bytes are the reply as the client gets it.
    let written: string | undefined;
    const write = socket.write;
    const ownWrite = Object.hasOwn(socket, 'write');
    socket.write = function (this: Socket, chunk: unknown, ...rest: unknown[]) {
      written = String(chunk);
      return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
    } as Socket['write'];
    try {
      return send.call(this, code, data, own);
    } finally {
      // The own properties shadowed net.Socket's; removing them brings those back.
      if (ownWrite) socket.write = write;
      else delete (socket as { write?: unknown }).write;
      if (halfClosed) delete (socket as { readyState?: string }).readyState;
      if (written !== undefined) onReply({ id: this.id, remoteAddress: this.remoteAddress }, written.replace(/\r\n$/, ''));
      // The reply that ends a transaction (or refuses its MAIL) leaves the session idle: once
      // smtp-server has reset it, a draining listener ends it.
      if (draining.has(this._server)) setImmediate(() => endIfIdle(this));
      afterReply(this, code);
    }
  };
  SMTPConnection.prototype._onCommand = function (this: SMTPConnection, command: Buffer, callback?: () => void) {
    if (limits.has(this._server)) clearTimeout(deadlines.get(this)?.command);
    // A command that would start something new while draining; one inside a transaction (RCPT, DATA) goes on.
    if (draining.has(this._server) && idle(this)) return this.send(421, SHUTTING_DOWN);
    return onCommand.call(this, command, callback);
  };
  SMTPConnection.prototype._onClose = function (this: SMTPConnection) {
    const timers = deadlines.get(this);
    clearTimeout(timers?.command);
    clearTimeout(timers?.session);
    return onClose.call(this);
  };
  SMTPConnection.prototype._createParser = function (this: SMTPConnection) {
    const parser = createParser.call(this);
    // STARTTLS retires the plaintext parser without ending it, so 'finish' means the client's FIN.
    if (listeners.has(this._server)) parser.once('finish', () => this.close());
    return parser;
  };
}

/** No transaction under way and no command being answered: nothing is lost by ending the session now. */
function idle(connection: SMTPConnection): boolean {
  return !connection._handlerPending && !connection._dataStream && !connection._nextHandler && !connection._upgrading && !connection.session?.envelope?.mailFrom;
}

function endIfIdle(connection: SMTPConnection): boolean {
  if (connection._closing || connection._closed || !idle(connection)) return false;
  // send() closes the connection after a 421.
  connection.send(421, SHUTTING_DOWN);
  return true;
}

/** How a drain ended: sessions closed at once as idle, and those still open at the deadline, cut. */
export interface Drained {
  idle: number;
  cut: number;
}

/**
 * Stops accepting connections on an adopted listener and ends its sessions as each becomes
 * idle; settles once every connection is gone, or at `timeout`, when those left are cut
 * (their clients never got a 250 for what was in flight, so they retry it).
 */
export function drainListener(server: SMTPServer, timeout: number): Promise<Drained> {
  draining.add(server);
  const internals = server as unknown as { connections: Set<SMTPConnection>; _pendingSockets: Map<unknown, Socket> };
  return new Promise((resolve) => {
    let closedIdle = 0;
    let cut = 0;
    const timer = setTimeout(() => {
      for (const connection of internals.connections) {
        cut++;
        connection._socket.destroy();
      }
    }, timeout);
    // net.Server calls back once its last connection has ended.
    server.server.close(() => {
      clearTimeout(timer);
      resolve({ idle: closedIdle, cut });
    });
    // Sockets still waiting for a PROXY header or a TLS handshake have no session to finish.
    for (const socket of internals._pendingSockets.values()) socket.destroy();
    for (const connection of internals.connections) if (endIfIdle(connection)) closedIdle++;
  });
}

/**
 * After each reply of an adopted listener: the session's deadline starts with the first (the
 * greeting); the next command line's starts now, except while the message is coming (354)
 * or the connection is ending; a session whose end is due ends once it is owed nothing.
 */
function afterReply(connection: SMTPConnection, code: number): void {
  const own = limits.get(connection._server);
  if (!own || connection._closing || connection._closed) return;
  let timers = deadlines.get(connection);
  if (!timers) {
    timers = {};
    deadlines.set(connection, timers);
    timers.session = setTimeout(() => endSession(connection, `4.4.2 Session longer than ${own.session / 1000} s, closing connection`), own.session).unref();
  }
  if (timers.ending) {
    const reason = timers.ending;
    setImmediate(() => endSession(connection, reason));
    return;
  }
  clearTimeout(timers.command);
  if (code === 354) return;
  // RFC 5321 §4.5.3.2.7 gives the server minutes to wait for a command; not for one byte of it at a time.
  timers.command = setTimeout(() => endSession(connection, `4.4.2 Timeout: no complete command within ${own.command / 1000} s, closing connection`), own.command).unref();
}

/** The relay owes the client a reply (a handler running, a message being decided on): ending now would waste it. */
function owesReply(connection: SMTPConnection): boolean {
  return Boolean(connection._handlerPending || (connection._dataStream && !(connection._parser && connection._parser._dataMode)));
}

/**
 * Ends a session with a 421 (RFC 5321 §3.8), now, or right after the reply the relay still
 * owes it, which is never cut short: a client told 421 mid-DATA got no 250 and retries.
 */
function endSession(connection: SMTPConnection, reason: string): void {
  if (connection._closing || connection._closed) return;
  if (owesReply(connection)) {
    const timers = deadlines.get(connection) ?? {};
    timers.ending = reason;
    deadlines.set(connection, timers);
    return;
  }
  connection.send(421, reason);
}

/** Ends one session of an adopted listener by its id (a stranger that did not authenticate in time); false when it is gone. */
export function endSessionById(server: SMTPServer, id: string, reason: string): boolean {
  const internals = server as unknown as { connections: Set<SMTPConnection> };
  for (const connection of internals.connections) {
    if (connection.id === id) {
      endSession(connection, reason);
      return true;
    }
  }
  return false;
}
