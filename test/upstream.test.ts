import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import { MAX_REPLY_LINE, ReplyParser, ReplySyntaxError, type Reply } from '../src/smtp/index.ts';
import { UpstreamError, openSession, type SessionOptions, type UpstreamErrorKind } from '../src/upstream/index.ts';

const LOOPBACK = '127.0.0.1';
let key = '';
let cert = '';

before(async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'upstream-test-'));
  try {
    await promisify(execFile)('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
      '-keyout', path.join(dir, 'k'), '-out', path.join(dir, 'c'),
      '-days', '1', '-subj', '/CN=localhost',
    ]);
    key = await readFile(path.join(dir, 'k'), 'utf8');
    cert = await readFile(path.join(dir, 'c'), 'utf8');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------- helpers

interface Smtp {
  port: number;
  close(): Promise<void>;
}

async function startSmtp(options: SMTPServerOptions): Promise<Smtp> {
  const server = new SMTPServer({
    logger: false,
    key,
    cert,
    authOptional: true,
    disabledCommands: ['AUTH'],
    disableReverseLookup: true,
    ...options,
  });
  await new Promise<void>((resolve, reject) => {
    server.server.once('error', reject);
    server.listen(0, LOOPBACK, () => resolve());
  });
  const address = server.server.address() as net.AddressInfo;
  return {
    port: address.port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Reads a whole onData stream, then accepts the message with `reply`. */
function collectData(sink: Buffer[], reply = 'OK queued as 4711'): NonNullable<SMTPServerOptions['onData']> {
  return (stream, _session, callback) => {
    const parts: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => parts.push(chunk));
    stream.on('end', () => {
      sink.push(Buffer.concat(parts));
      callback(null, reply);
    });
  };
}

function smtpError(code: number, message: string): Error & { responseCode: number } {
  return Object.assign(new Error(message), { responseCode: code });
}

interface RawConn {
  socket: net.Socket;
  lines: string[];
  /** In data mode, raw bytes go to onData instead of being split into command lines. */
  mode: 'command' | 'data';
  send(text: string): void;
}

interface Raw {
  port: number;
  conns: RawConn[];
  close(): Promise<void>;
}

// A function, so TypeScript does not keep the narrowing across script calls that change it.
function inDataMode(conn: RawConn): boolean {
  return conn.mode === 'data';
}

/** A scripted SMTP server for what smtp-server cannot be made to do. */
async function startRaw(
  script: (line: string, conn: RawConn) => void,
  opts: { greeting?: string; onData?: (chunk: Buffer, conn: RawConn) => void } = {},
): Promise<Raw> {
  const conns: RawConn[] = [];
  const server = net.createServer((socket) => {
    socket.on('error', () => undefined);
    const conn: RawConn = { socket, lines: [], mode: 'command', send: (text) => void socket.write(text) };
    conns.push(conn);
    let buffered = '';
    socket.on('data', (chunk: Buffer) => {
      if (conn.mode === 'data') {
        opts.onData?.(chunk, conn);
        return;
      }
      buffered += chunk.toString('latin1');
      let lf: number;
      while (conn.mode === 'command' && (lf = buffered.indexOf('\n')) !== -1) {
        const line = buffered.slice(0, lf).replace(/\r$/, '');
        buffered = buffered.slice(lf + 1);
        conn.lines.push(line);
        if (/^QUIT$/i.test(line)) {
          socket.end('221 bye\r\n');
          continue;
        }
        script(line, conn);
      }
      // The script may have switched to data mode: what followed DATA is message bytes.
      if (inDataMode(conn) && buffered.length > 0) {
        const rest = Buffer.from(buffered, 'latin1');
        buffered = '';
        opts.onData?.(rest, conn);
      }
    });
    socket.write(opts.greeting ?? '220 raw.test ESMTP\r\n');
  });
  await new Promise<void>((resolve) => server.listen(0, LOOPBACK, resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    port,
    conns,
    close: () =>
      new Promise<void>((resolve) => {
        for (const conn of conns) conn.socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** EHLO/MAIL/RCPT/RSET answered plainly; anything else goes to `more`. */
function basicScript(more: (line: string, conn: RawConn) => void = () => undefined) {
  return (line: string, conn: RawConn): void => {
    if (/^EHLO /i.test(line)) conn.send('250-raw.test\r\n250 8BITMIME\r\n');
    else if (/^(MAIL|RCPT|RSET)/i.test(line)) conn.send('250 OK\r\n');
    else more(line, conn);
  };
}

function options(port: number, extra: Partial<SessionOptions> = {}): SessionOptions {
  return { host: LOOPBACK, port, helo: 'relay.example.org', starttls: 'never', ...extra };
}

async function rejectsWith(promise: Promise<unknown>, kind: UpstreamErrorKind): Promise<UpstreamError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof UpstreamError, `expected UpstreamError, got ${String(err)}`);
    assert.equal(err.kind, kind, err.message);
    return err;
  }
  assert.fail(`expected rejection with kind ${kind}`);
}

/** The reference for what the server must receive: every line end CRLF, ending in CRLF. */
function normalize(message: Buffer): Buffer {
  let text = message.toString('latin1').replace(/\r\n|\r|\n/g, '\r\n');
  if (text.length > 0 && !text.endsWith('\r\n')) text += '\r\n';
  return Buffer.from(text, 'latin1');
}

/** Deterministic pseudo-random numbers, so a failure can be reproduced. */
function prng(seed: number): (n: number) => number {
  let state = seed >>> 0;
  return (n) => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state % n;
  };
}

/** A stream that yields `total` bytes of `fill` in `size`-byte chunks, made on demand. */
function bigStream(total: number, size = 64 * 1024): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= total) {
        this.push(null);
        return;
      }
      const n = Math.min(size, total - sent);
      sent += n;
      this.push(Buffer.alloc(n, 'x\r\n'));
    },
  });
}

// ---------------------------------------------------------------- reply parser

describe('ReplyParser', () => {
  test('reassembles a multi-line reply fed one byte at a time', () => {
    const parser = new ReplyParser();
    const wire = Buffer.from('550-5.1.1 The email account\r\n550-5.1.1 does not exist.\r\n550 5.1.1 https://x.test q1\r\n');
    const replies: Reply[] = [];
    for (let i = 0; i < wire.length; i++) {
      replies.push(...parser.push(wire.subarray(i, i + 1)));
      if (i < wire.length - 1) assert.equal(replies.length, 0);
    }
    assert.deepEqual(replies, [
      { code: 550, enhanced: '5.1.1', lines: ['The email account', 'does not exist.', 'https://x.test q1'] },
    ]);
    assert.equal(parser.pending, false);
  });

  test('several replies in one chunk, bare LF, empty text, code-only line', () => {
    const parser = new ReplyParser();
    const replies = parser.push(Buffer.from('250 OK\n354 \r\n221\r\n250 2.0.0\r\n'));
    assert.deepEqual(replies, [
      { code: 250, lines: ['OK'] },
      { code: 354, lines: [''] },
      { code: 221, lines: [''] },
      { code: 250, enhanced: '2.0.0', lines: [''] },
    ]);
  });

  test('an enhanced code must sit alone and match the reply class', () => {
    const parser = new ReplyParser();
    assert.deepEqual(parser.push(Buffer.from('250 5.1.1 odd\r\n')), [{ code: 250, lines: ['5.1.1 odd'] }]);
    assert.deepEqual(parser.push(Buffer.from('451 4.3.0.1 text\r\n')), [{ code: 451, lines: ['4.3.0.1 text'] }]);
    assert.deepEqual(parser.push(Buffer.from('452 4.2.2 Mailbox full\r\n')), [
      { code: 452, enhanced: '4.2.2', lines: ['Mailbox full'] },
    ]);
  });

  test('rejects over-long lines, too many lines, garbage and a code change', () => {
    const long = new ReplyParser();
    assert.throws(() => long.push(Buffer.from('250 ' + 'a'.repeat(MAX_REPLY_LINE))), ReplySyntaxError);
    // Once broken, always broken.
    assert.throws(() => long.push(Buffer.from('250 OK\r\n')), ReplySyntaxError);
    // The limit holds for a line that arrives whole, too.
    assert.throws(() => new ReplyParser().push(Buffer.from('250 ' + 'a'.repeat(MAX_REPLY_LINE) + '\r\n')), ReplySyntaxError);
    assert.throws(() => new ReplyParser().push(Buffer.from('250-x\r\n'.repeat(100) + '250 x\r\n')), ReplySyntaxError);
    assert.deepEqual(new ReplyParser().push(Buffer.from('250-x\r\n'.repeat(99) + '250 x\r\n'))[0].lines.length, 100);
    assert.throws(() => new ReplyParser().push(Buffer.from('hello\r\n')), ReplySyntaxError);
    assert.throws(() => new ReplyParser().push(Buffer.from('199 no\r\n')), ReplySyntaxError);
    assert.throws(() => new ReplyParser().push(Buffer.from('250-a\r\n251 b\r\n')), ReplySyntaxError);
  });
});

// ---------------------------------------------------------------- sessions against smtp-server

describe('session against smtp-server', () => {
  test('greeting, EHLO and opportunistic STARTTLS with a self-signed certificate', async () => {
    const seen: { secure: boolean; helo: string }[] = [];
    const smtp = await startSmtp({
      size: 10485760,
      onMailFrom(_address, session, callback) {
        seen.push({ secure: session.secure, helo: session.hostNameAppearsAs });
        callback();
      },
    });
    try {
      const session = await openSession(options(smtp.port, { starttls: 'opportunistic' }));
      assert.ok(session.tls);
      assert.match(session.tls.version, /^TLSv1\.[23]$/);
      assert.ok(session.tls.cipher.length > 0);
      assert.equal(session.tls.authorized, false);
      assert.equal(typeof session.tls.authorizationError, 'string');
      // These come from the EHLO sent after TLS, which no longer offers STARTTLS.
      assert.equal(session.extensions.get('SIZE'), '10485760');
      assert.equal(session.extensions.get('8BITMIME'), '');
      assert.equal(session.extensions.has('STARTTLS'), false);
      assert.equal(session.remoteAddress, LOOPBACK);
      assert.equal((await session.mailFrom('a@example.org')).code, 250);
      assert.deepEqual(seen, [{ secure: true, helo: 'relay.example.org' }]);
      await session.quit();
      assert.equal(session.closed, true);
    } finally {
      await smtp.close();
    }
  });

  test('certificate verified with tlsOptions.ca and the MX host name', async () => {
    const names: (string | undefined)[] = [];
    const smtp = await startSmtp({
      onSecure(_socket, session, callback) {
        names.push((session as SMTPServerSession & { servername?: string }).servername);
        callback();
      },
    });
    try {
      const session = await openSession(
        options(smtp.port, { starttls: 'opportunistic', hostname: 'localhost.', tlsOptions: { ca: cert } }),
      );
      assert.equal(session.tls?.authorized, true);
      assert.equal(session.tls?.authorizationError, undefined);
      assert.deepEqual(names, ['localhost']);
      await session.quit();
    } finally {
      await smtp.close();
    }
  });

  test("starttls 'never' stays in plain text", async () => {
    const smtp = await startSmtp({});
    try {
      const session = await openSession(options(smtp.port));
      assert.equal(session.tls, null);
      assert.equal(session.extensions.has('STARTTLS'), true);
      await session.quit();
    } finally {
      await smtp.close();
    }
  });

  test('MAIL and RCPT give each reply as the server sent it', async () => {
    const mailFrom: { address: string; args: unknown }[] = [];
    const smtp = await startSmtp({
      size: 1_000_000,
      onMailFrom(address, _session, callback) {
        mailFrom.push({ address: address.address, args: address.args });
        callback();
      },
      onRcptTo(address, _session, callback) {
        if (address.address === 'nobody@example.net') {
          callback(smtpError(550, '5.1.1 The email account that you tried to reach does not exist'));
        } else if (address.address === 'full@example.net') {
          callback(smtpError(452, '4.2.2 Mailbox full'));
        } else {
          callback();
        }
      },
    });
    try {
      const session = await openSession(options(smtp.port));
      // Not awaited one by one: the session queues them and answers each in order.
      const [mail, ok, nobody, full] = await Promise.all([
        session.mailFrom('', { SIZE: '1234', BODY: '8BITMIME' }),
        session.rcptTo('someone@example.net'),
        session.rcptTo('nobody@example.net'),
        session.rcptTo('full@example.net'),
      ]);
      assert.equal(mail.code, 250);
      assert.deepEqual(mailFrom, [{ address: '', args: { SIZE: '1234', BODY: '8BITMIME' } }]);
      assert.equal(ok.code, 250);
      assert.equal(ok.enhanced, undefined);
      assert.deepEqual(nobody, {
        code: 550,
        enhanced: '5.1.1',
        lines: ['The email account that you tried to reach does not exist'],
      });
      assert.deepEqual(full, { code: 452, enhanced: '4.2.2', lines: ['Mailbox full'] });
      assert.equal((await session.rset()).code, 250);
      assert.equal(session.closed, false);
      await assert.rejects(session.rcptTo('a\r\nDATA@example.net'), TypeError);
      await assert.rejects(session.mailFrom('a@example.org', { 'X=Y': 'z' }), TypeError);
      await session.quit();
    } finally {
      await smtp.close();
    }
  });

  test('DATA arrives exactly: dots, bare LF and CR, 8-bit bytes, split CRLF', async () => {
    const received: Buffer[] = [];
    const smtp = await startSmtp({ onData: collectData(received) });
    const chunks = [
      'Subject: dots\r\n\r\n.leading dot\r\n',
      '..two dots\n',
      '.',
      '\r\n',
      'bare LF line\nnext\r',
      '\n.',
      'dot after split CRLF\r',
      'bare CR line\r',
      '.\r\n',
      Buffer.from([0x38, 0x62, 0x69, 0x74, 0x3a, 0x20, 0xc3, 0xa9, 0xff, 0x80, 0x0d, 0x0a]),
      '.\r',
      '\n',
      'no line break at the end',
    ].map((part) => (typeof part === 'string' ? Buffer.from(part, 'latin1') : part));
    try {
      const session = await openSession(options(smtp.port));
      await session.mailFrom('a@example.org');
      await session.rcptTo('b@example.net');
      const reply = await session.data(Readable.from(chunks));
      assert.deepEqual(reply, { code: 250, lines: ['OK queued as 4711'] });
      assert.equal(received.length, 1);
      assert.deepEqual(received[0], normalize(Buffer.concat(chunks)));
      await session.quit();
    } finally {
      await smtp.close();
    }
  });

  test('DATA refused before the body: the reply comes back and the stream is not read', async () => {
    const smtp = await startSmtp({});
    try {
      const session = await openSession(options(smtp.port));
      await session.mailFrom('a@example.org');
      const message = Readable.from([Buffer.from('Subject: x\r\n\r\nbody\r\n')]);
      const reply = await session.data(message);
      assert.equal(reply.code, 503);
      assert.equal(message.readableEnded, false);
      assert.equal(message.destroyed, false);
      message.destroy();
      assert.equal(session.closed, false);
      assert.equal((await session.rset()).code, 250);
      await session.quit();
    } finally {
      await smtp.close();
    }
  });

  test('a 3 MB message with awkward chunk boundaries arrives byte-exact', async () => {
    const received: Buffer[] = [];
    const smtp = await startSmtp({ onData: collectData(received) });
    const random = prng(20240611);
    const ends = ['\r\n', '\r\n', '\r\n', '\n', '\r'];
    const starts = ['', '', '', '', '.', '..', '.\r\n', 'From '];
    const parts: Buffer[] = [];
    let size = 0;
    while (size < 3 * 1024 * 1024) {
      const line = Buffer.alloc(random(120));
      // Any byte but CR and LF: all of 8-bit, NUL and '.' included.
      for (let i = 0; i < line.length; i++) {
        const b = random(256);
        line[i] = b === 0x0d || b === 0x0a ? 0x2e : b;
      }
      const piece = Buffer.concat([
        Buffer.from(starts[random(starts.length)], 'latin1'),
        line,
        Buffer.from(ends[random(ends.length)], 'latin1'),
      ]);
      parts.push(piece);
      size += piece.length;
    }
    const message = Buffer.concat(parts);
    // Cut right before and after every kind of interesting byte some of the time, and
    // otherwise anywhere, from 1 byte to 100 KB, so every state crosses a boundary.
    const chunks: Buffer[] = [];
    let offset = 0;
    while (offset < message.length) {
      let n = random(4) === 0 ? 1 + random(3) : 1 + random(100_000);
      const interesting = message.indexOf(random(2) === 0 ? 0x0d : 0x2e, offset);
      if (random(3) === 0 && interesting > offset) n = interesting - offset + random(2);
      chunks.push(message.subarray(offset, Math.min(message.length, offset + n)));
      offset += n;
    }
    try {
      const session = await openSession(options(smtp.port, { starttls: 'opportunistic' }));
      await session.mailFrom('a@example.org');
      await session.rcptTo('b@example.net');
      const reply = await session.data(Readable.from(chunks));
      assert.equal(reply.code, 250);
      const expected = normalize(message);
      assert.equal(received[0].length, expected.length);
      assert.ok(received[0].equals(expected), 'message changed in transit');
      await session.quit();
    } finally {
      await smtp.close();
    }
  });

  test('a failing source aborts the session before the final dot', async () => {
    let completed = false;
    let closedConnection!: () => void;
    const serverSawClose = new Promise<void>((resolve) => (closedConnection = resolve));
    const smtp = await startSmtp({
      onData(stream, _session, callback) {
        stream.on('data', () => undefined);
        stream.on('end', () => {
          completed = true;
          callback();
        });
      },
      onClose: () => closedConnection(),
    });
    try {
      const session = await openSession(options(smtp.port));
      await session.mailFrom('a@example.org');
      await session.rcptTo('b@example.net');
      const boom = new Error('spool read failed');
      const source = new Readable({
        read() {
          this.push(Buffer.from('Subject: partial\r\n\r\nfirst half\r\n'));
          this.destroy(boom);
        },
      });
      await assert.rejects(session.data(source), (err) => err === boom);
      assert.equal(session.closed, true);
      await rejectsWith(session.rset(), 'lost');
      await serverSawClose;
      assert.equal(completed, false);
    } finally {
      await smtp.close();
    }
  });

  test('binds the egress address', async () => {
    const remotes: string[] = [];
    const smtp = await startSmtp({
      onConnect(session, callback) {
        remotes.push(session.remoteAddress);
        callback();
      },
    });
    try {
      const session = await openSession(options(smtp.port, { localAddress: '127.0.0.2' }));
      assert.equal(session.localAddress, '127.0.0.2');
      assert.deepEqual(remotes, ['127.0.0.2']);
      await session.quit();
    } finally {
      await smtp.close();
    }
  });
});

// ---------------------------------------------------------------- scripted servers

describe('session against scripted servers', () => {
  test('multi-line greeting, EHLO keywords and a multi-line refusal', async () => {
    const raw = await startRaw(
      (line, conn) => {
        if (/^EHLO /.test(line)) {
          conn.send('250-mx.test greets relay\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n250-auth PLAIN LOGIN\r\n250 ENHANCEDSTATUSCODES\r\n');
        } else if (/^MAIL/.test(line)) {
          // Split mid-line over two writes.
          conn.send('250 2.1.0 O');
          conn.send('K sender\r\n');
        } else if (/^RCPT/.test(line)) {
          conn.send('550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n');
          conn.send('550-5.1.1 double-checking the recipient\'s email address for typos or\r\n');
          conn.send('550 5.1.1 unnecessary spaces. https://support.example/?p=NoSuchUser q1\r\n');
        }
      },
      { greeting: '220-mx.test ESMTP\r\n220 no UCE\r\n' },
    );
    try {
      const session = await openSession(options(raw.port, { starttls: 'opportunistic' }));
      assert.deepEqual([...session.extensions], [
        ['SIZE', '35882577'],
        ['8BITMIME', ''],
        ['AUTH', 'PLAIN LOGIN'],
        ['ENHANCEDSTATUSCODES', ''],
      ]);
      assert.deepEqual(await session.mailFrom('a@example.org'), { code: 250, enhanced: '2.1.0', lines: ['OK sender'] });
      assert.deepEqual(await session.rcptTo('nobody@example.net'), {
        code: 550,
        enhanced: '5.1.1',
        lines: [
          'The email account that you tried to reach does not exist. Please try',
          "double-checking the recipient's email address for typos or",
          'unnecessary spaces. https://support.example/?p=NoSuchUser q1',
        ],
      });
      assert.deepEqual(raw.conns[0].lines.slice(0, 3), [
        'EHLO relay.example.org',
        'MAIL FROM:<a@example.org>',
        'RCPT TO:<nobody@example.net>',
      ]);
      await session.quit();
    } finally {
      await raw.close();
    }
  });

  test('the wire carries dot-stuffed CRLF lines and the terminator', async () => {
    let wire = Buffer.alloc(0);
    const raw = await startRaw(
      basicScript((line, conn) => {
        if (line === 'DATA') {
          conn.mode = 'data';
          conn.send('354 go\r\n');
        }
      }),
      {
        onData(chunk, conn) {
          wire = Buffer.concat([wire, chunk]);
          if (wire.subarray(-5).toString() === '\r\n.\r\n') {
            conn.mode = 'command';
            conn.send('250 2.0.0 queued\r\n');
          }
        },
      },
    );
    try {
      const session = await openSession(options(raw.port));
      await session.mailFrom('a@example.org');
      await session.rcptTo('b@example.net');
      const reply = await session.data(Readable.from(['.a\n', '.', '\r', '\n.b\r\n..c\r', '.d']));
      assert.deepEqual(reply, { code: 250, enhanced: '2.0.0', lines: ['queued'] });
      assert.equal(wire.toString('latin1'), '..a\r\n..\r\n..b\r\n...c\r\n..d\r\n.\r\n');
      await session.quit();
    } finally {
      await raw.close();
    }
  });

  test('an empty message is just the terminator', async () => {
    let wire = '';
    const raw = await startRaw(
      basicScript((line, conn) => {
        if (line === 'DATA') {
          conn.mode = 'data';
          conn.send('354 go\r\n');
        }
      }),
      {
        onData(chunk, conn) {
          wire += chunk.toString('latin1');
          if (wire.endsWith('.\r\n')) {
            conn.mode = 'command';
            conn.send('554 5.6.0 empty\r\n');
          }
        },
      },
    );
    try {
      const session = await openSession(options(raw.port));
      await session.mailFrom('a@example.org');
      await session.rcptTo('b@example.net');
      const reply = await session.data(Readable.from([]));
      assert.equal(reply.code, 554);
      assert.equal(wire, '.\r\n');
      await session.quit();
    } finally {
      await raw.close();
    }
  });

  test('connection refused', async () => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, LOOPBACK, resolve));
    const { port } = server.address() as net.AddressInfo;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const err = await rejectsWith(openSession(options(port)), 'connect');
    assert.equal((err.cause as NodeJS.ErrnoException).code, 'ECONNREFUSED');
  });

  test('server closing the socket mid-DATA rejects with lost', async () => {
    const raw = await startRaw(
      basicScript((line, conn) => {
        if (line === 'DATA') {
          conn.mode = 'data';
          conn.send('354 go\r\n');
        }
      }),
      { onData: (_chunk, conn) => conn.socket.destroy() },
    );
    try {
      const session = await openSession(options(raw.port));
      await session.mailFrom('a@example.org');
      await session.rcptTo('b@example.net');
      await rejectsWith(session.data(bigStream(8 * 1024 * 1024)), 'lost');
      assert.equal(session.closed, true);
    } finally {
      await raw.close();
    }
  });

  test('a reply during the message ends the transaction and the session', async () => {
    const raw = await startRaw(
      basicScript((line, conn) => {
        if (line === 'DATA') {
          conn.mode = 'data';
          conn.send('354 go\r\n');
        }
      }),
      {
        onData(_chunk, conn) {
          if (conn.lines.at(-1) !== 'told') {
            conn.lines.push('told');
            conn.send('552 5.3.4 Message too big\r\n');
          }
        },
      },
    );
    try {
      const session = await openSession(options(raw.port));
      await session.mailFrom('a@example.org');
      await session.rcptTo('b@example.net');
      const reply = await session.data(bigStream(32 * 1024 * 1024));
      assert.deepEqual(reply, { code: 552, enhanced: '5.3.4', lines: ['Message too big'] });
      assert.equal(session.closed, true);
    } finally {
      await raw.close();
    }
  });

  test('421 is returned and closes the session (RFC 5321 §3.8)', async () => {
    const raw421 = await startRaw((line, conn) => {
      if (/^EHLO /.test(line)) conn.send('250 mx.test\r\n');
      else if (/^MAIL/.test(line)) conn.send('250 OK\r\n');
      else if (/^RCPT/.test(line)) conn.socket.end('421 4.7.0 Try again later, closing connection\r\n');
    });
    try {
      const session = await openSession(options(raw421.port));
      await session.mailFrom('a@example.org');
      const reply = await session.rcptTo('b@example.net');
      assert.deepEqual(reply, { code: 421, enhanced: '4.7.0', lines: ['Try again later, closing connection'] });
      assert.equal(session.closed, true);
      const err = await rejectsWith(session.rcptTo('c@example.net'), 'lost');
      assert.equal(err.reply?.code, 421);
      await session.quit();
    } finally {
      await raw421.close();
    }
  });

  test('a reply that cannot be parsed is a protocol error', async () => {
    const raw = await startRaw(basicScript((line, conn) => conn.send('hello there\r\n')));
    try {
      const session = await openSession(options(raw.port));
      await rejectsWith(session.noop(), 'protocol');
      assert.equal(session.closed, true);
    } finally {
      await raw.close();
    }
  });

  test('no reply in time is a timeout and closes the session', async () => {
    const raw = await startRaw((line, conn) => {
      if (/^EHLO /.test(line)) conn.send('250 mx.test\r\n');
      // MAIL is never answered.
    });
    try {
      const session = await openSession(options(raw.port, { timeouts: { command: 200 } }));
      await rejectsWith(session.mailFrom('a@example.org'), 'timeout');
      assert.equal(session.closed, true);
    } finally {
      await raw.close();
    }
  });

  test('a 554 greeting is refused with the reply, after a polite QUIT', async () => {
    const raw = await startRaw(() => undefined, { greeting: '554 5.7.1 no service for you\r\n' });
    try {
      const err = await rejectsWith(openSession(options(raw.port)), 'reply');
      assert.deepEqual(err.reply, { code: 554, enhanced: '5.7.1', lines: ['no service for you'] });
      assert.deepEqual(raw.conns[0].lines, ['QUIT']);
    } finally {
      await raw.close();
    }
  });

  test('EHLO refused with 5xx falls back to HELO', async () => {
    const raw = await startRaw((line, conn) => {
      if (/^EHLO /.test(line)) conn.send('502 5.5.1 what?\r\n');
      else if (/^HELO /.test(line)) conn.send('250 mx.test\r\n');
    });
    try {
      const session = await openSession(options(raw.port, { starttls: 'opportunistic' }));
      assert.equal(session.extensions.size, 0);
      assert.equal(session.tls, null);
      assert.deepEqual(raw.conns[0].lines, ['EHLO relay.example.org', 'HELO relay.example.org']);
      await session.quit();
    } finally {
      await raw.close();
    }
  });

  test('HELO refused too rejects with the reply', async () => {
    const raw = await startRaw((line, conn) => {
      if (/^EHLO /.test(line)) conn.send('500 unknown\r\n');
      else if (/^HELO /.test(line)) conn.send('550 5.7.1 go away\r\n');
    });
    try {
      const err = await rejectsWith(openSession(options(raw.port)), 'reply');
      assert.equal(err.reply?.code, 550);
    } finally {
      await raw.close();
    }
  });

  test('plaintext after 220 to STARTTLS is a protocol error (RFC 3207 injection)', async () => {
    const raw = await startRaw((line, conn) => {
      if (/^EHLO /.test(line)) conn.send('250-mx.test\r\n250 STARTTLS\r\n');
      else if (line === 'STARTTLS') conn.send('220 go ahead\r\n250 injected\r\n');
    });
    try {
      await rejectsWith(openSession(options(raw.port, { starttls: 'opportunistic' })), 'protocol');
    } finally {
      await raw.close();
    }
  });

  test('a failed TLS handshake rejects with tls', async () => {
    const raw = await startRaw((line, conn) => {
      if (/^EHLO /.test(line)) conn.send('250-mx.test\r\n250 STARTTLS\r\n');
      else if (line === 'STARTTLS') {
        conn.send('220 go ahead\r\n');
        conn.mode = 'data';
      }
    }, { onData: (_chunk, conn) => conn.send('this is not TLS\r\n'.repeat(10)) });
    try {
      await rejectsWith(openSession(options(raw.port, { starttls: 'opportunistic' })), 'tls');
    } finally {
      await raw.close();
    }
  });

  test('STARTTLS refused with 454 carries on in plain text', async () => {
    const raw = await startRaw((line, conn) => {
      if (/^EHLO /.test(line)) conn.send('250-mx.test\r\n250 STARTTLS\r\n');
      else if (line === 'STARTTLS') conn.send('454 4.7.0 TLS not available\r\n');
      else if (/^MAIL/.test(line)) conn.send('250 OK\r\n');
    });
    try {
      const session = await openSession(options(raw.port, { starttls: 'opportunistic' }));
      assert.equal(session.tls, null);
      assert.equal((await session.mailFrom('a@example.org')).code, 250);
      await session.quit();
    } finally {
      await raw.close();
    }
  });
});

describe('required STARTTLS and AUTH', () => {
  test("starttls 'required' without STARTTLS on offer: QUIT, and nothing else", async () => {
    const raw = await startRaw(basicScript());
    try {
      const err = await rejectsWith(openSession(options(raw.port, { starttls: 'required', hostname: 'mx.example.org' })), 'tls');
      assert.match(err.message, /mx\.example\.org does not offer STARTTLS/);
      assert.deepEqual(raw.conns[0].lines, ['EHLO relay.example.org', 'QUIT']);
    } finally {
      await raw.close();
    }
  });

  test("starttls 'required' and STARTTLS refused with 454: QUIT instead of plain text", async () => {
    const raw = await startRaw((line, conn) => {
      if (/^EHLO /.test(line)) conn.send('250-mx.test\r\n250 STARTTLS\r\n');
      else if (line === 'STARTTLS') conn.send('454 4.7.0 TLS not available\r\n');
    });
    try {
      const err = await rejectsWith(openSession(options(raw.port, { starttls: 'required' })), 'tls');
      assert.match(err.message, /refused STARTTLS: 454 4\.7\.0 TLS not available/);
      assert.deepEqual(raw.conns[0].lines, ['EHLO relay.example.org', 'STARTTLS', 'QUIT']);
    } finally {
      await raw.close();
    }
  });

  test('verify: a self-signed certificate ends the session before the second EHLO', async () => {
    const commands: string[] = [];
    const smtp = await startSmtp({
      onMailFrom(address, _session, callback) {
        commands.push(address.address);
        callback();
      },
    });
    try {
      const err = await rejectsWith(openSession(options(smtp.port, { starttls: 'required', verify: true, hostname: 'localhost' })), 'tls');
      assert.match(err.message, /certificate of localhost not verified \(DEPTH_ZERO_SELF_SIGNED_CERT/);
      const trusted = await openSession(options(smtp.port, { starttls: 'required', verify: true, hostname: 'localhost', tlsOptions: { ca: cert } }));
      assert.equal(trusted.tls?.authorized, true);
      await trusted.quit();
      assert.deepEqual(commands, []);
    } finally {
      await smtp.close();
    }
  });

  for (const method of ['PLAIN', 'LOGIN'] as const) {
    test(`AUTH ${method} over TLS, refused credentials come back as the server's reply`, async () => {
      const attempts: string[] = [];
      const smtp = await startSmtp({
        disabledCommands: [],
        authMethods: [method],
        onAuth(auth, _session, callback) {
          attempts.push(`${auth.method} ${auth.username} ${auth.password}`);
          if (auth.password === 'right') callback(null, { user: auth.username });
          else callback(smtpError(535, '5.7.8 Authentication credentials invalid'));
        },
      });
      try {
        const session = await openSession(options(smtp.port, { starttls: 'required' }));
        assert.equal((await session.auth('relay', 'wrong')).code, 535);
        assert.equal((await session.auth('relay', 'right')).code, 235);
        await session.quit();
        assert.deepEqual(attempts, [`${method} relay wrong`, `${method} relay right`]);
      } finally {
        await smtp.close();
      }
    });
  }

  test('AUTH is never sent without TLS unless allowed', async () => {
    const raw = await startRaw((line, conn) => {
      if (/^EHLO /.test(line)) conn.send('250-raw.test\r\n250 AUTH=PLAIN\r\n');
      else if (/^AUTH PLAIN /.test(line)) conn.send('235 2.7.0 OK\r\n');
    });
    try {
      const session = await openSession(options(raw.port));
      await rejectsWith(session.auth('relay', 'secret'), 'protocol');
      assert.equal((await session.auth('relay', 'secret', { allowCleartext: true })).code, 235);
      await session.quit();
      assert.deepEqual(raw.conns[0].lines, ['EHLO relay.example.org', `AUTH PLAIN ${Buffer.from('\0relay\0secret').toString('base64')}`, 'QUIT']);
    } finally {
      await raw.close();
    }
  });
});
