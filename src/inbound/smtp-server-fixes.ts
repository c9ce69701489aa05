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
 */
/** The smtp-server release whose internals (send, _createParser, readyState) this was written against. */
export const WRITTEN_FOR = '3.21.6';

/**
 * Sees each reply a listener writes, as written (CRLF between the lines of a multi-line
 * reply, none after the last), with the connection's id (the session id) and client address.
 */
export type ReplyObserver = (connection: { id: string; remoteAddress: string }, reply: string) => void;

const listeners = new WeakMap<SMTPServer, ReplyObserver>();
const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3} /;
let installed = false;

export function adoptListener(server: SMTPServer, onReply: ReplyObserver): void {
  listeners.set(server, onReply);
  if (installed) return;
  installed = true;
  const { send, _createParser: createParser } = SMTPConnection.prototype;
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
    }
  };
  SMTPConnection.prototype._createParser = function (this: SMTPConnection) {
    const parser = createParser.call(this);
    // STARTTLS retires the plaintext parser without ending it, so 'finish' means the client's FIN.
    if (listeners.has(this._server)) parser.once('finish', () => this.close());
    return parser;
  };
}
