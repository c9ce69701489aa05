import { chmodSync, unlinkSync, lstatSync } from 'node:fs';
import net from 'node:net';
import type { Hold } from '../abuse/index.ts';
import type { FlushCount } from '../dns/index.ts';
import type { Logger } from '../observability/index.ts';

/**
 * The running relay's control socket: a Unix socket that takes one command line and answers
 * one line, `ok …` or `error …`, then closes, as `rndc` or `postfix flush` reach their
 * daemons. Local only, and mode 0600: whoever may use it may also signal the process.
 */

/** The answer to `dns flush`: what was dropped, per cache level. */
export function flushAnswer(dropped: FlushCount): string {
  const shared = dropped.redisError ? `; Redis did not answer (${dropped.redisError}), its entries expire by their TTL` : dropped.redis === undefined ? '' : `, ${dropped.redis} in Redis`;
  return `DNS cache flushed: ${dropped.memory} in-process answers${shared}`;
}

/** The abuse guard's holds, as the control socket reaches them. */
export interface HoldsControl {
  holds(): Promise<Hold[]>;
  release(who: string): Promise<Hold[]>;
}

/** One relay's (or one supervisor's, for all its workers) commands on the control socket. */
export function controlCommands(services: { flushDns(): Promise<FlushCount>; abuse: HoldsControl }): ControlCommands {
  const none = (name: string, run: () => Promise<string>) => async (args: string[]) => {
    if (args.length) throw new Error(`${name} takes no arguments`);
    return run();
  };
  return {
    'dns flush': none('dns flush', async () => flushAnswer(await services.flushDns())),
    // JSON on the one line: the CLI lays it out.
    'abuse list': none('abuse list', async () => JSON.stringify(await services.abuse.holds())),
    'abuse release': async (args) => {
      if (args.length !== 1) throw new Error('abuse release takes one sender (a user name or an address)');
      return JSON.stringify(await services.abuse.release(args[0]));
    },
  };
}

/** Command name (one or more words) → what it does with the words after it, resolving to the text after `ok`. */
export type ControlCommands = Record<string, (args: string[]) => Promise<string>>;

// Commands are a few words: a longer line is no command of ours, and is not buffered further.
const MAX_LINE = 1024;
// A client that connects and says nothing must not hold a connection open.
const IDLE_TIMEOUT = 10_000;

function answerTo(line: string, commands: ControlCommands): Promise<string> {
  const words = line.split(/\s+/);
  // The longest name the line begins with: `abuse release alice` is `abuse release` given `alice`.
  const name = Object.keys(commands)
    .filter((known) => words.slice(0, known.split(' ').length).join(' ') === known)
    .sort((a, b) => b.length - a.length)[0];
  if (name === undefined) return Promise.resolve(`error unknown command "${line}" (known: ${Object.keys(commands).join(', ')})`);
  return commands[name](words.slice(name.split(' ').length)).then(
    (text) => `ok ${text}`,
    (err: unknown) => `error ${err instanceof Error ? err.message : String(err)}`,
  );
}

function serve(connection: net.Socket, commands: ControlCommands): void {
  let buffered = '';
  connection.setEncoding('utf8');
  connection.setTimeout(IDLE_TIMEOUT, () => connection.destroy());
  connection.on('error', () => connection.destroy());
  connection.on('data', (chunk: string) => {
    buffered += chunk;
    const end = buffered.indexOf('\n');
    if (end < 0 && buffered.length <= MAX_LINE) return;
    connection.removeAllListeners('data');
    // The command may take longer than an idle client may wait (a flush of a large Redis).
    connection.setTimeout(0);
    const line = end < 0 ? undefined : buffered.slice(0, end).replace(/\r$/, '').trim();
    const answer = line === undefined ? Promise.resolve('error line too long') : answerTo(line, commands);
    void answer.then((text) => connection.end(`${text}\n`));
  });
}

function listen(server: net.Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** Whether a relay answers on `path`: a socket file nobody listens to is left over from a crash. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(path, () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

export class ControlServer {
  readonly path: string;
  #server: net.Server;

  private constructor(path: string, server: net.Server) {
    this.path = path;
    this.#server = server;
  }

  /**
   * Listens on `path`, taking over a socket file a crashed relay left. Undefined, after one
   * warning, when that cannot be (no such directory, no permission, another relay on it):
   * the relay runs on without it, only `dns flush` and `abuse list | release` cannot reach it.
   */
  static async listen(path: string, commands: ControlCommands, logger: Logger): Promise<ControlServer | undefined> {
    const server = net.createServer((connection) => serve(connection, commands));
    try {
      try {
        await listen(server, path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || (await answers(path))) throw err;
        // Only a socket a crashed relay left is taken over: never a file the path names by mistake.
        if (!lstatSync(path).isSocket()) throw err;
        unlinkSync(path);
        await listen(server, path);
      }
      chmodSync(path, 0o600);
    } catch (err) {
      server.close();
      const { code, message } = err as NodeJS.ErrnoException;
      const why = code === 'EADDRINUSE' ? 'another process answers on it' : message;
      logger.warn({ socket: path, error: why }, 'control socket not available: `hygiene-relay dns flush` and `abuse list | release` cannot reach this relay (SIGHUP still flushes)');
      return undefined;
    }
    logger.info({ socket: path }, 'control socket listening');
    return new ControlServer(path, server);
  }

  /** Stops listening; node removes the socket file. */
  close(): Promise<void> {
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

/** Sends one command line to the control socket at `path` and resolves to the one-line answer. */
export function controlRequest(path: string, line: string, timeout = 15_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const connection = net.connect(path, () => connection.write(`${line}\n`));
    let answer = '';
    connection.setEncoding('utf8');
    connection.setTimeout(timeout, () => connection.destroy(Object.assign(new Error(`no answer within ${timeout / 1000} s`), { code: 'ETIMEDOUT' })));
    connection.on('data', (chunk: string) => (answer += chunk));
    connection.once('error', reject);
    connection.once('end', () => resolve(answer.replace(/\r?\n$/, '')));
  });
}
