import net from 'node:net';

/** What a scripted line handler answers: a reply line, undefined for the ordinary answer, or 'drop'. */
export type RawAnswer = string | undefined | 'drop';

/**
 * An SMTP server that says exactly what a test scripts, including replies no real library
 * would send (3xx to RCPT, 250 to DATA): for out-of-protocol behaviour of a destination.
 */
export class RawMx {
  readonly log: string[] = [];
  #server: net.Server;
  #sockets = new Set<net.Socket>();

  private constructor(server: net.Server) {
    this.#server = server;
  }

  /** `greeting`: the reply that opens each session (a provider refusing at connect); 220 by default. */
  static async start(host: string, port: number, answer: (command: string) => RawAnswer, options: { greeting?: () => string } = {}): Promise<RawMx> {
    let mx: RawMx;
    const server = net.createServer((socket) => {
      let buffer = '';
      let inData = false;
      mx.#sockets.add(socket);
      socket.on('close', () => mx.#sockets.delete(socket));
      socket.on('error', () => undefined);
      socket.write(`${options.greeting?.() ?? '220 raw.test ESMTP'}\r\n`);
      /** Sends the reply; returns the line sent, or undefined when the connection was dropped. */
      const reply = (command: string, ordinary: string): string | undefined => {
        mx.log.push(command);
        const scripted = answer(command);
        if (scripted === 'drop') {
          socket.destroy();
          return undefined;
        }
        const line = scripted ?? ordinary;
        socket.write(`${line}\r\n`);
        return line;
      };
      socket.on('data', (chunk) => {
        buffer += chunk.toString('latin1');
        for (;;) {
          if (inData) {
            const end = buffer.indexOf('\r\n.\r\n');
            if (end < 0) return;
            buffer = buffer.slice(end + 5);
            inData = false;
            if (reply('.', '250 2.0.0 queued') === undefined) return;
            continue;
          }
          const end = buffer.indexOf('\r\n');
          if (end < 0) return;
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const verb = line.slice(0, 4).toUpperCase();
          const ordinary = verb === 'EHLO' ? '250 raw.test' : verb === 'DATA' ? '354 go ahead' : verb === 'QUIT' ? '221 bye' : '250 2.0.0 ok';
          const sent = reply(line, ordinary);
          if (sent === undefined) return;
          if (verb === 'DATA' && sent.startsWith('354')) inData = true;
          if (verb === 'QUIT') socket.end();
        }
      });
    });
    mx = new RawMx(server);
    await new Promise<void>((resolve) => server.listen(port, host, resolve));
    return mx;
  }

  /** Stops listening and drops every connection still open (a relay may keep idle sessions). */
  close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}
