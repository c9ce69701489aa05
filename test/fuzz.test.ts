import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { hashPassword } from '../src/inbound/index.ts';
import { RelayProcess } from './harness/process.ts';
import { send } from './harness/send.ts';
import { relayTlsFiles } from './harness/tls.ts';
import { Internet, message } from './harness/world.ts';

/**
 * Issue 14, part 6 (protocol fuzzing): random SMTP sessions, hostile arguments and raw bytes
 * against one relay process. Each property runs FUZZ_RUNS sessions (`npm run fuzz` runs
 * thousands; `npm test` a few dozen, to stay within seconds).
 */
const RUNS = Number(process.env.FUZZ_RUNS ?? 40);
/** How much the relay's resident memory may grow over every session of this file. */
const MEMORY_BOUND = 64 * 1024 * 1024;
/** The relay's limits.clientTimeout here: an idle session, or one the client left half-way through a TLS handshake, ends then. */
const CLIENT_TIMEOUT_MS = 3000;
/** A session still open this long after the client's last byte is a hang, not slowness. */
const SESSION_DEADLINE_MS = CLIENT_TIMEOUT_MS + 5000;
/** Outside clients.networks: every session from here must end without relaying anything. */
const STRANGERS = ['127.0.0.99', '127.0.0.98', '127.0.0.97'];

// ------------------------------------------------------------ what a session is made of

/** Bytes as latin1 text, so NUL, CR, LF and 8-bit octets go on the wire exactly. */
const octets = (maxLength: number) => fc.uint8Array({ maxLength }).map((bytes) => Buffer.from(bytes).toString('latin1'));
const hostile = fc.oneof(
  fc.string({ maxLength: 40 }),
  octets(40),
  fc.constantFrom('\0', '\r', '\n', '\r\n', '\xff\xfe', 'é', '\x1b[31m', ' ', '\t', '<', '>', ':', '"', '=', '\u00e4'),
  fc.constantFrom(1000, 4096, 70_000).map((n) => 'A'.repeat(n)),
);
const addresses = fc.oneof(
  fc.constantFrom(
    '<>', '<alice@example.test>', '<bob@gmail.test>', '<carol@outlook.test>', '<x@unknown.test>', 'bob@gmail.test',
    '<bob%evil.test@gmail.test>', '<@evil.test:bob@gmail.test>', '<"bob@evil.test"@gmail.test>', '<bob@[127.0.0.10]>',
    '<bob@gmail.test.>', '<bob@münchen.test>', '<ü@gmail.test>', '<bob@-bad-.test>', '<bob@gmail.test', '<<bob@gmail.test>>',
    '<postmaster>', '<bob@localhost>', '<bob@127.0.0.1>', '<bob\0@gmail.test>', '<bob\r\nRCPT TO:<x@gmail.test>@gmail.test>',
  ),
  fc.tuple(fc.string({ maxLength: 300 }), fc.constantFrom('gmail.test', 'outlook.test', 'example.test', 'x'.repeat(300))).map(([local, domain]) => `<${local}@${domain}>`),
  hostile.map((text) => `<${text}>`),
);
const params = fc.array(
  fc.oneof(
    fc.constantFrom('SIZE=100', 'SIZE=0', 'SIZE=-1', 'SIZE=99999999999999999999', 'SIZE=abc', 'SIZE', 'BODY=8BITMIME', 'BODY=7BIT', 'BODY=BINARYMIME', 'BODY=junk'),
    fc.constantFrom('SMTPUTF8', 'SMTPUTF8=yes', 'REQUIRETLS', 'RET=FULL', 'ENVID=x', 'NOTIFY=NEVER', 'ORCPT=rfc822;x@y', 'AUTH=<>', 'X-UNKNOWN=1', '=', '=='),
    hostile.map((text) => `${text}=${text}`),
  ),
  { maxLength: 4 },
).map((list) => (list.length ? ` ${list.join(' ')}` : ''));
const base64 = octets(60).map((text) => Buffer.from(text, 'latin1').toString('base64'));
const body = fc.oneof(
  fc.constant(message()),
  fc.constant(message({ to: 'bob@gmail.test, carol@outlook.test', body: '.\r\n..\r\n. \r\nend\r\n' })),
  octets(2000),
  fc.array(fc.oneof(fc.string({ maxLength: 80 }), octets(80), fc.constantFrom('.', '..', '.\r', '\r\n.\r\n', 'Subject: \xff\xfe', 'A'.repeat(1200))), { maxLength: 30 }).map((lines) => lines.join('\r\n')),
);

/** One step: the bytes it sends. Commands end in CRLF unless the step is raw bytes. */
const step = fc.oneof(
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom('EHLO', 'HELO', 'ehlo', 'EHLO  '), fc.oneof(fc.constantFrom('corp-ex01.example.test', '', '[127.0.0.1]', '[IPv6:::1]'), hostile)).map(([verb, name]) => `${verb} ${name}\r\n`) },
  { weight: 4, arbitrary: fc.tuple(fc.constantFrom('MAIL FROM:', 'mail from:', 'MAIL FROM: ', 'MAIL FROM'), addresses, params).map(([verb, address, p]) => `${verb}${address}${p}\r\n`) },
  { weight: 4, arbitrary: fc.tuple(fc.constantFrom('RCPT TO:', 'rcpt to:', 'RCPT TO: ', 'RCPT'), addresses, params).map(([verb, address, p]) => `${verb}${address}${p}\r\n`) },
  // DATA with a message and its end, or DATA alone (what follows is then read as the message).
  { weight: 3, arbitrary: fc.tuple(body, fc.boolean()).map(([text, stuff]) => `DATA\r\n${stuff ? text.replace(/(^|\r\n)\./g, '$1..') : text}\r\n.\r\n`) },
  { weight: 1, arbitrary: fc.constant('DATA\r\n') },
  { weight: 1, arbitrary: fc.tuple(fc.nat({ max: 100_000 }), fc.constantFrom('', ' LAST'), octets(200)).map(([size, last, bytes]) => `BDAT ${size}${last}\r\n${bytes}`) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom('RSET', 'NOOP', 'QUIT', 'VRFY', 'EXPN', 'HELP', 'STARTTLS', 'TURN', 'ETRN', 'GET / HTTP/1.1'), fc.oneof(fc.constant(''), hostile.map((text) => ` ${text}`))).map(([verb, arg]) => `${verb}${arg}\r\n`) },
  {
    weight: 2,
    arbitrary: fc.oneof(
      fc.tuple(fc.constantFrom('PLAIN', 'LOGIN', 'CRAM-MD5', 'XOAUTH2', 'plain', ''), fc.oneof(fc.constant(''), base64.map((b) => ` ${b}`), hostile.map((text) => ` ${text}`))).map(([mechanism, initial]) => `AUTH ${mechanism}${initial}\r\n`),
      fc.constant(`AUTH PLAIN ${Buffer.from('\0mdaemon\0wrong').toString('base64')}\r\n`),
      fc.tuple(base64, base64).map(([user, password]) => `AUTH LOGIN\r\n${user}\r\n${password}\r\n`),
      fc.constant('AUTH LOGIN\r\n*\r\n'),
    ),
  },
  { weight: 2, arbitrary: fc.oneof(octets(300), hostile.map((text) => `${text}\r\n`)) },
);

interface Session {
  /** Talk before the greeting, as a spammer's bot does. */
  early: boolean;
  bytes: string;
  /** Where the bytes are cut into separate writes (TCP segments, pipelined bursts). */
  cuts: number[];
  end: 'quit' | 'half-close' | 'reset';
}

const session: fc.Arbitrary<Session> = fc.record({
  early: fc.nat({ max: 4 }).map((n) => n === 0),
  bytes: fc.array(step, { minLength: 1, maxLength: 12 }).map((steps) => steps.join('')),
  cuts: fc.array(fc.nat(), { maxLength: 6 }),
  end: fc.constantFrom('quit', 'half-close', 'reset'),
});

// ------------------------------------------------------------ playing it and judging what came back

/** RFC 5321 §4.2: a reply line is a code 2yz–5yz, then SP or "-" and text of HT and printable US-ASCII, or the code alone. */
const REPLY_LINE = /^[2-5][0-5]\d(?:[ -][\t\x20-\x7e]*)?$/;

/** Every complete line the relay sent, and what it sent after the last CRLF. */
interface Heard {
  lines: string[];
  rest: string;
}

/** Plays a session from `localAddress` and resolves with everything heard once the relay has closed the connection. */
function play(port: number, localAddress: string, s: Session): Promise<Heard> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress, allowHalfOpen: true });
    let received = '';
    let greeted = false;
    let deadline: NodeJS.Timeout | undefined;
    socket.on('error', () => undefined);
    const talk = () => {
      const bytes = Buffer.from(s.bytes, 'latin1');
      const cuts = [...new Set(s.cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
      let from = 0;
      for (const cut of [...cuts, bytes.length]) {
        if (cut > from) socket.write(bytes.subarray(from, cut));
        from = cut;
      }
      if (s.end === 'quit') socket.end('QUIT\r\n');
      else if (s.end === 'half-close') socket.end();
      // A reset after the bytes have gone out: written, then RST instead of FIN.
      else socket.write('', () => socket.resetAndDestroy());
      deadline = setTimeout(() => {
        socket.destroy();
        reject(new Error(`the relay kept the session open ${SESSION_DEADLINE_MS} ms after the client's last byte; heard ${JSON.stringify(received.slice(-500))}`));
      }, SESSION_DEADLINE_MS);
    };
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
      if (!greeted && received.includes('\r\n')) {
        greeted = true;
        if (!s.early) talk();
      }
    });
    socket.once('connect', () => {
      if (s.early) talk();
    });
    socket.once('close', () => {
      clearTimeout(deadline);
      const lines = received.split('\r\n');
      const rest = lines.pop() ?? '';
      resolve({ lines, rest });
    });
  });
}

/** The reply lines up to a 220 to STARTTLS (after which the relay speaks TLS to bytes that are not), checked. */
function checkReplies(heard: Heard, s: Session): void {
  const context = () => `session ${JSON.stringify(s)}\nheard ${JSON.stringify(heard.lines)}`;
  let previous: string | undefined;
  for (const [i, line] of heard.lines.entries()) {
    assert.match(line, REPLY_LINE, `line ${i} is no SMTP reply line (RFC 5321 §4.2): ${JSON.stringify(line)}\n${context()}`);
    // §4.2.1: the lines of a multi-line reply all carry the same code.
    if (previous?.[3] === '-') assert.equal(line.slice(0, 3), previous.slice(0, 3), `a multi-line reply changed its code\n${context()}`);
    if (i === 0) assert.match(line, /^(220|421|554)[ -]/, `the first reply is a greeting or a refusal of the session\n${context()}`);
    // RFC 3207 §4: after 220 the server starts the TLS handshake; what follows is TLS, not lines.
    if (i > 0 && /^220 /.test(line) && /STARTTLS/i.test(s.bytes)) return;
    previous = line;
  }
  assert.equal(heard.rest, '', `the relay left a reply unfinished (no CRLF): ${JSON.stringify(heard.rest)}\n${context()}`);
}

describe('protocol fuzzing against a relay process', () => {
  let internet: Internet;
  let relay: RelayProcess;
  let dir: string;
  let tlsDir: string;
  let rssBefore = 0;
  const delivered = () => [...internet.hosts.values()].reduce((n, d) => n + d.received.length, 0);
  const upstreamMailFroms = () => [...internet.hosts.values()].reduce((n, d) => n + d.mailFroms.length, 0);

  /** The relay still runs and still relays a normal message from a trusted client. */
  async function stillRelays(subject: string): Promise<void> {
    assert.equal(relay.child.exitCode, null, `the relay exited: ${relay.stderr}`);
    assert.equal(relay.child.signalCode, null, `the relay was killed: ${relay.stderr}`);
    const gmail = internet.destination('gmail.test');
    const before = gmail.received.length;
    const result = await send(relay.port, 'alice@example.test', ['bob@gmail.test'], message({ subject }));
    assert.equal(result.data?.code, 250, JSON.stringify(result));
    assert.equal(gmail.received.length, before + 1);
    assert.match(gmail.received.at(-1)!.message.toString('latin1'), new RegExp(`Subject: ${subject}`));
  }

  before(async () => {
    internet = await Internet.start();
    dir = mkdtempSync(path.join(tmpdir(), 'fuzz-'));
    const files = await relayTlsFiles();
    tlsDir = files.dir;
    relay = await RelayProcess.start(
      path.join(dir, 'relay.yaml'),
      internet.relayConfig({
        // STARTTLS and AUTH on offer, AUTH also in the clear: every verb has something behind it.
        listeners: [{ host: '127.0.0.1', port: 0, starttls: true, allowInsecureAuth: true }],
        tls: { cert: files.cert, key: files.key },
        clients: { networks: ['127.0.0.1/32'], users: [{ name: 'mdaemon', password: await hashPassword('correct horse') }] },
        // AUTH guessing is blocked after three failures (454 at once): the growing delay before
        // each 535 (up to 8 s) would otherwise be most of what these sessions spend.
        limits: { maxMessageSize: '256KB', clientTimeout: `${CLIENT_TIMEOUT_MS}ms`, authFailures: { perAddress: 3, perUser: 3 } },
      }),
    );
    // Warm: the first message pays for loading and compiling what every later one reuses.
    await stillRelays('warm-up');
    rssBefore = relay.memory('VmRSS');
  });
  after(async () => {
    await relay?.stop();
    await internet?.close();
    rmSync(dir, { recursive: true, force: true });
    rmSync(tlsDir, { recursive: true, force: true });
  });

  it('answers a stranger only with valid reply lines, and relays nothing for it', async () => {
    const before = { delivered: delivered(), mailFroms: upstreamMailFroms() };
    let n = 0;
    await fc.assert(
      fc.asyncProperty(session, async (s) => {
        const heard = await play(relay.port, STRANGERS[n++ % STRANGERS.length], s);
        checkReplies(heard, s);
      }),
      { numRuns: RUNS },
    );
    assert.equal(delivered(), before.delivered, 'a destination received mail from a stranger');
    assert.equal(upstreamMailFroms(), before.mailFroms, 'a destination was sent MAIL FROM for a stranger');
    assert.deepEqual(relay.records.filter((r) => r.msg === 'transaction' && STRANGERS.includes((r.client as { ip: string }).ip)), []);
    await stillRelays('after-strangers');
  });

  it('answers a trusted client only with valid reply lines, whatever it sends', async () => {
    await fc.assert(
      fc.asyncProperty(session, async (s) => {
        const heard = await play(relay.port, '127.0.0.1', s);
        checkReplies(heard, s);
      }),
      { numRuns: RUNS },
    );
    await stillRelays('after-trusted');
  });

  it(`keeps its resident memory within ${MEMORY_BOUND / 1024 / 1024} MB of where it started`, () => {
    const growth = relay.memory('VmRSS') - rssBefore;
    assert.ok(growth < MEMORY_BOUND, `VmRSS grew by ${(growth / 1024 / 1024).toFixed(1)} MB over the fuzzed sessions`);
  });
});
