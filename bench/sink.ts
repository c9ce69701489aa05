import { promises as dnsPromises } from 'node:dns';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { authenticate, type DNSResolver } from 'mailauth';
import { SMTPServer, type SMTPServerDataStream, type SMTPServerSession } from 'smtp-server';

/**
 * The discarding destination of `npm run bench`, as its own process so that its CPU is
 * neither the driver's nor the measured system's. It accepts everything, keeps nothing but
 * counts, and answers the driver over stdin/stdout, one JSON object a line:
 *   → {"cmd":"reset"}   ← {"ok":true}          counts and samples start again
 *   → {"cmd":"count"}   ← {"messages":N}       cheap, polled while a round drains
 *   → {"cmd":"report"}  ← {"messages":…, …}     see Report
 * The first line it writes is {"ready":true,"port":N}.
 */

const { values } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.10' },
    port: { type: 'string', default: '0' },
    dns: { type: 'string' },
    // Every Nth message is kept for verification; verifying is deferred to the report so that
    // mailauth's CPU does not land inside a measured round.
    'sample-every': { type: 'string', default: '100' },
    'max-samples': { type: 'string', default: '20' },
  },
});

export interface Report {
  messages: number;
  /** DKIM-Signature fields, summed over every message. */
  signatures: number;
  /** Messages with at least one DKIM-Signature field. */
  signed: number;
  /** Sampled messages mailauth was asked about, and how many of them had every signature pass and DMARC pass. */
  sampled: number;
  verified: number;
  /** Why the first sample that did not verify failed, for the driver's error. */
  failure?: string;
  /** X-Bench-Id → process.hrtime.bigint() at the end of its DATA, in ns as a decimal string (CLOCK_MONOTONIC, comparable across processes). */
  arrivals: Record<string, string>;
}

interface Sample {
  message: Buffer;
  ip: string;
  helo: string;
  sender: string;
}

const sampleEvery = Number(values['sample-every']);
const maxSamples = Number(values['max-samples']);
let messages = 0;
let signatures = 0;
let signed = 0;
let samples: Sample[] = [];
let arrivals: Record<string, string> = {};

const HEADER_END = Buffer.from('\r\n\r\n');
const DKIM_FIELD = /^dkim-signature:/gim;
const BENCH_ID = /^x-bench-id:[ \t]*(\S+)/im;

/**
 * smtp-server 3.21.6 holds every greeting back 100 ms (early-talker detection in
 * SMTPConnection.init) with no option to turn it off; a client opening a connection per
 * message would measure that timer, not the system. Greet as soon as the connection exists,
 * and turn the timer's later call into a no-op: the same adjustment as the test
 * destinations (test/harness/destination.ts), without patching node_modules.
 */
class Sink extends SMTPServer {
  override connect(...args: Parameters<SMTPServer['connect']>): void {
    super.connect(...args);
    // connect() adds the new connection last and synchronously; Sets keep insertion order.
    const connection = [...this.connections].at(-1);
    if (!connection) return;
    const ready = connection.connectionReady;
    connection.connectionReady = () => undefined;
    ready.call(connection);
  }
}

function onData(stream: SMTPServerDataStream, session: SMTPServerSession, callback: (err?: Error | null) => void): void {
  const chunks: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => chunks.push(chunk));
  stream.on('end', () => {
    const at = process.hrtime.bigint();
    const message = Buffer.concat(chunks);
    const end = message.indexOf(HEADER_END);
    const header = message.subarray(0, end < 0 ? message.length : end + 2).toString('latin1');
    const count = header.match(DKIM_FIELD)?.length ?? 0;
    messages++;
    signatures += count;
    if (count > 0) signed++;
    const id = BENCH_ID.exec(header)?.[1];
    if (id) arrivals[id] = at.toString();
    if (messages % sampleEvery === 1 % sampleEvery && samples.length < maxSamples) {
      samples.push({ message, ip: session.remoteAddress, helo: session.hostNameAppearsAs, sender: session.envelope.mailFrom ? session.envelope.mailFrom.address : '' });
    }
    callback();
  });
}

/** mailauth's lookups against the bench's DNS server only, never the system resolver. */
function resolverFor(server: string): DNSResolver {
  const resolver = new dnsPromises.Resolver({ timeout: 1000, tries: 2 });
  resolver.setServers([server]);
  // mailauth's DNSResolver type says string[] | string[][], yet it reads MX lookups as the
  // { exchange, priority } records dns.promises returns; resolve() gives each type its shape.
  return ((name: string, rrtype: string) => resolver.resolve(name, rrtype)) as DNSResolver;
}

async function verify(resolver: DNSResolver): Promise<{ verified: number; failure?: string }> {
  let verified = 0;
  let failure: string | undefined;
  for (const sample of samples) {
    const result = await authenticate(sample.message, { ip: sample.ip, helo: sample.helo, sender: sample.sender, mta: 'sink.bench', resolver });
    const dkim = result.dkim.results.map((r) => `${r.signingDomain ?? '?'}:${r.status.result}${r.status.comment ? ` (${r.status.comment})` : ''}`);
    const dmarc = result.dmarc ? result.dmarc.status.result : 'none';
    if (dkim.length > 0 && result.dkim.results.every((r) => r.status.result === 'pass') && dmarc === 'pass') verified++;
    else failure ??= `dkim ${dkim.join(', ') || 'none'}; dmarc ${dmarc}`;
  }
  return { verified, failure };
}

const resolver = values.dns ? resolverFor(values.dns) : undefined;
const server = new Sink({
  name: 'sink.bench',
  banner: 'discarding sink',
  // Plain SMTP like the relay's and Postfix's deliveries to it: no TLS cost in the numbers.
  hideSTARTTLS: true,
  disabledCommands: ['STARTTLS', 'AUTH'],
  authOptional: true,
  disableReverseLookup: true,
  logger: false,
  // 10 sessions of three systems' pools (the relay keeps up to 50 idle) must all fit.
  maxClients: 1000,
  onData,
});
server.on('error', (err) => process.stderr.write(`sink: ${err.message}\n`));
server.listen(Number(values.port), values.host, () => {
  const address = server.server.address();
  process.stdout.write(`${JSON.stringify({ ready: true, port: typeof address === 'object' && address ? address.port : 0 })}\n`);
});

createInterface({ input: process.stdin }).on('line', async (line) => {
  const command = JSON.parse(line) as { cmd: string };
  if (command.cmd === 'reset') {
    messages = signatures = signed = 0;
    samples = [];
    arrivals = {};
    process.stdout.write('{"ok":true}\n');
  } else if (command.cmd === 'count') {
    process.stdout.write(`${JSON.stringify({ messages })}\n`);
  } else if (command.cmd === 'report') {
    const { verified, failure } = resolver ? await verify(resolver) : { verified: 0, failure: 'no --dns to verify against' };
    const report: Report = { messages, signatures, signed, sampled: samples.length, verified, failure, arrivals };
    process.stdout.write(`${JSON.stringify(report)}\n`);
  }
});
// The driver closing our stdin is the end of the run.
process.stdin.on('end', () => server.close(() => process.exit(0)));
