import net from 'node:net';
import { RECIPIENT, SENDER } from './systems.ts';

/**
 * An open-loop client for the latency table: smtp-source sends as fast as replies come back
 * and cannot pace, so a slow reply would lower the load that measures it. Here message i is
 * due at start + i / rate whatever happened before; it goes out on the first idle one of a
 * fixed set of connections (one transaction at a time on each, as smtp-source sends).
 */

export interface PacedResult {
  /** X-Bench-Id → process.hrtime.bigint() just before the end-of-data dot was written. */
  endOfData: Map<string, bigint>;
  /** End of DATA to the final reply, in ms, per message. */
  replyMs: number[];
  /** What the whole run took, in seconds (more than messages / rate when the system fell behind). */
  seconds: number;
}

/** The lines of SMTP replies, one reply (all its lines) at a time. */
class Connection {
  readonly socket: net.Socket;
  #buffer = '';
  #waiting: ((reply: string) => void)[] = [];

  constructor(socket: net.Socket) {
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.#buffer += chunk.toString('latin1');
      let end: number;
      while ((end = this.#buffer.indexOf('\r\n')) >= 0) {
        const line = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        // RFC 5321 §4.2.1: "250-" continues a reply, "250 " ends it.
        if (line[3] !== '-') this.#waiting.shift()?.(line);
      }
    });
  }

  reply(): Promise<string> {
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  async command(line: string, expect: number): Promise<string> {
    const reply = this.reply();
    this.socket.write(`${line}\r\n`);
    return expected(await reply, expect, line);
  }
}

function expected(reply: string, code: number, what: string): string {
  if (Number(reply.slice(0, 3)) !== code) throw new Error(`${what}: expected ${code}, got ${JSON.stringify(reply)}`);
  return reply;
}

/** A message shaped like smtp-source's: its header fields, then `size` bytes of body in 78-character lines. */
export function benchMessage(id: string, size: number): string {
  const line = `${'La de da de da '.repeat(6).slice(0, 76)}\r\n`;
  const body = line.repeat(Math.ceil(size / line.length)).slice(0, size - 2) + '\r\n';
  return [`From: <${SENDER}>`, `To: <${RECIPIENT}>`, `Date: ${new Date().toUTCString()}`, `Message-Id: <${id}@client.example.test>`, 'Subject: bench', `X-Bench-Id: ${id}`, '', body].join('\r\n');
}

async function open(host: string, port: number): Promise<Connection> {
  const socket = net.connect({ host, port });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const connection = new Connection(socket);
  expected(await connection.reply(), 220, 'greeting');
  await connection.command('EHLO client.example.test', 250);
  return connection;
}

export async function paced(options: { host: string; port: number; rate: number; messages: number; connections: number; size: number; prefix: string }): Promise<PacedResult> {
  const connections = await Promise.all(Array.from({ length: options.connections }, () => open(options.host, options.port)));
  const idle = [...connections];
  const endOfData = new Map<string, bigint>();
  const replyMs: number[] = [];
  const backlog: string[] = [];
  let failure: Error | undefined;

  const send = async (connection: Connection, id: string): Promise<void> => {
    await connection.command(`MAIL FROM:<${SENDER}>`, 250);
    await connection.command(`RCPT TO:<${RECIPIENT}>`, 250);
    await connection.command('DATA', 354);
    const reply = connection.reply();
    connection.socket.write(benchMessage(id, options.size));
    const at = process.hrtime.bigint();
    connection.socket.write('.\r\n');
    expected(await reply, 250, 'end of DATA');
    replyMs.push(Number(process.hrtime.bigint() - at) / 1e6);
    endOfData.set(id, at);
  };
  const dispatch = (connection: Connection, id: string): Promise<void> =>
    send(connection, id).then(
      () => {
        const next = backlog.shift();
        if (next === undefined) idle.push(connection);
        else return dispatch(connection, next);
      },
      (err: Error) => void (failure ??= err),
    );

  const started = process.hrtime.bigint();
  const inFlight: Promise<void>[] = [];
  for (let i = 0; i < options.messages && !failure; i++) {
    const due = started + BigInt(Math.round((i / options.rate) * 1e9));
    const wait = Number(due - process.hrtime.bigint()) / 1e6;
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    const id = `${options.prefix}-${i}`;
    const connection = idle.pop();
    if (connection) inFlight.push(dispatch(connection, id));
    else backlog.push(id);
  }
  await Promise.all(inFlight);
  for (const connection of connections) connection.socket.end('QUIT\r\n');
  if (failure) throw failure;
  return { endOfData, replyMs, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
}
