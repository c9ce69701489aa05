import type { SMTPServer } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

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
 */
/** The smtp-server release whose internals (send, _createParser, readyState) this was written against. */
export const WRITTEN_FOR = '3.21.6';

const listeners = new WeakSet<SMTPServer>();
const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3} /;
let installed = false;

export function adoptListener(server: SMTPServer): void {
  listeners.add(server);
  if (installed) return;
  installed = true;
  const { send, _createParser: createParser } = SMTPConnection.prototype;
  SMTPConnection.prototype.send = function (this: SMTPConnection, code: number, data?: string | string[], context?: string | false) {
    if (!listeners.has(this._server)) return send.call(this, code, data, context);
    const own = typeof data === 'string' && ENHANCED.test(data) ? false : context;
    const socket = this._socket;
    if (socket.readyState !== 'writeOnly') return send.call(this, code, data, own);
    Object.defineProperty(socket, 'readyState', { value: 'open', configurable: true });
    try {
      return send.call(this, code, data, own);
    } finally {
      // The own property shadowed net.Socket's getter; removing it brings the getter back.
      delete (socket as { readyState?: string }).readyState;
    }
  };
  SMTPConnection.prototype._createParser = function (this: SMTPConnection) {
    const parser = createParser.call(this);
    // STARTTLS retires the plaintext parser without ending it, so 'finish' means the client's FIN.
    if (listeners.has(this._server)) parser.once('finish', () => this.close());
    return parser;
  };
}
