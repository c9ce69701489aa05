import { randomInt } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket from 'dns-packet';
import type { Answer, OptAnswer, Packet } from 'dns-packet';
import { Histogram, METRIC_PREFIX, SECONDS_BUCKETS } from '../observability/index.ts';

/**
 * A stub resolver speaking the DNS wire protocol to the configured servers.
 *
 * Written by hand (with dns-packet for the message format) because node's resolver does not
 * say how long an MX, TXT, PTR or CNAME answer may be kept, nor the SOA TTL of a negative
 * answer, and the cache must honour both. Answers come out in exactly the shapes and error
 * codes of node's `dns.promises.resolve`, which mailauth was written against.
 */

export interface NameServer {
  host: string;
  port: number;
}

export interface WireOptions {
  servers: NameServer[];
  /** Milliseconds to wait for each attempt. */
  timeout: number;
  /** Attempts per server. */
  tries: number;
}

/** The record types the relay and mailauth ask for; node's resolver answers the rest. */
export const CACHED_TYPES = ['A', 'AAAA', 'CNAME', 'MX', 'NS', 'PTR', 'TXT'] as const;
export type CachedType = (typeof CACHED_TYPES)[number];

/** node's record shapes: strings, `{ exchange, priority }` for MX, string chunks for TXT. */
export type RecordValue = string | { exchange: string; priority: number; type: 'MX' } | string[];

export interface WireAnswer {
  records: RecordValue[];
  /** Seconds: the smallest TTL of the records and of the CNAMEs that led to them. */
  ttl: number;
}

/** Node's error codes; NXDOMAIN and NODATA carry how long the zone says to remember them. */
export class DnsLookupError extends Error {
  readonly code: string;
  readonly hostname: string;
  readonly syscall: string;
  /** Seconds, from the SOA in the authority section (RFC 2308 §5); only for ENOTFOUND/ENODATA. */
  declare readonly negativeTtl: number | undefined;
  /** `host:port` of the server whose answer (or silence) this is, for messages that name it. */
  declare server: string | undefined;

  constructor(code: string, hostname: string, rrtype: string, negativeTtl?: number) {
    const syscall = `query${rrtype[0]}${rrtype.slice(1).toLowerCase()}`;
    super(`${syscall} ${code} ${hostname}`);
    this.code = code;
    this.hostname = hostname;
    this.syscall = syscall;
    // Not enumerable: the error looks like node's to anyone who inspects it.
    Object.defineProperty(this, 'negativeTtl', { value: negativeTtl });
    Object.defineProperty(this, 'server', { value: undefined, writable: true });
  }
}

// The size the 2020 DNS flag day settled on: big enough for SPF and DKIM TXT answers, small
// enough not to fragment.
const EDNS_PAYLOAD = 1232;

/** By RCODE (RFC 1035 §4.1.1, the low four bits of the flags). */
const RCODE_ERRORS: Record<number, string> = { 1: 'EFORMERR', 2: 'ESERVFAIL', 3: 'ENOTFOUND', 4: 'ENOTIMP', 5: 'EREFUSED' };

/** Errors worth asking the next server (or the same one again) about. */
const RETRYABLE = new Set(['ESERVFAIL', 'EREFUSED', 'ETIMEOUT', 'ECONNREFUSED', 'EFORMERR', 'ENOTIMP']);

/** Lower case, without the final dot; the root is the empty name. */
function canonicalName(name: string): string {
  return name === '.' ? '' : name.toLowerCase().replace(/\.$/, '');
}

/** RFC 1035 §2.3.4: labels of 1 to 63 octets, 253 in all (255 on the wire). */
function validName(name: string): boolean {
  if (name === '') return true;
  return Buffer.byteLength(name) <= 253 && name.split('.').every((label) => label.length > 0 && Buffer.byteLength(label) <= 63);
}

function question(name: string, type: CachedType): Packet {
  return {
    type: 'query',
    id: randomInt(0x10000),
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type, name: canonicalName(name), class: 'IN' }],
    additionals: [{ type: 'OPT', name: '.', udpPayloadSize: EDNS_PAYLOAD, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false, options: [] }],
  };
}

/** A reply to this very query: same id, a response, the same question (RFC 5452 §9.1). */
function answers(reply: Packet, query: Packet): boolean {
  const asked = query.questions?.[0];
  const echoed = reply.questions?.[0];
  return (
    reply.type === 'response' &&
    reply.id === query.id &&
    !!asked &&
    !!echoed &&
    echoed.type === asked.type &&
    canonicalName(echoed.name) === asked.name
  );
}

function failure(code: string, message: string): NodeJS.ErrnoException {
  return Object.assign(new Error(message), { code });
}

/**
 * One exchange with a deadline: `start` sends the question and calls `settle` with the
 * reply or an error; the returned function releases the socket, whichever way it ended.
 */
function exchange(timeout: number, start: (settle: (err: Error | null, packet?: Packet) => void) => () => void): Promise<Packet> {
  return new Promise((resolve, reject) => {
    let release = () => {};
    let settled = false;
    const timer = setTimeout(() => settle(failure('ETIMEOUT', 'timeout')), timeout);
    function settle(err: Error | null, packet?: Packet) {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      release();
      if (err) reject(err);
      else resolve(packet!);
    }
    release = start(settle);
  });
}

function overUdp(server: NameServer, message: Buffer, query: Packet, timeout: number): Promise<Packet> {
  return exchange(timeout, (settle) => {
    const socket = dgram.createSocket(net.isIPv6(server.host) ? 'udp6' : 'udp4');
    // An ICMP port unreachable comes back as an error on the socket.
    socket.on('error', () => settle(failure('ECONNREFUSED', 'connection refused')));
    socket.on('message', (data, from) => {
      // Anything not from the server we asked, or not about our question, is ignored: a
      // spoofed answer would have to guess the id and the source port.
      if (from.address !== server.host || from.port !== server.port) return;
      let packet: Packet;
      try {
        packet = dnsPacket.decode(data);
      } catch {
        return;
      }
      if (answers(packet, query)) settle(null, packet);
    });
    // Connected, so the kernel reports a closed port at once (ICMP) and filters other sources.
    socket.connect(server.port, server.host, () => socket.send(message));
    return () => socket.close();
  });
}

/** After a truncated UDP answer (RFC 7766 §5): the same question over TCP. */
function overTcp(server: NameServer, query: Packet, timeout: number): Promise<Packet> {
  return exchange(timeout, (settle) => {
    const socket = net.connect({ host: server.host, port: server.port });
    let received = Buffer.alloc(0);
    socket.on('error', () => settle(failure('ECONNREFUSED', 'connection refused')));
    socket.on('connect', () => socket.write(dnsPacket.streamEncode(query)));
    socket.on('data', (chunk) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < 2 || received.length < 2 + received.readUInt16BE(0)) return;
      let packet: Packet;
      try {
        packet = dnsPacket.streamDecode(received);
      } catch {
        return settle(failure('EBADRESP', 'malformed answer'));
      }
      settle(answers(packet, query) ? null : failure('EBADRESP', 'answer to another question'), packet);
    });
    return () => socket.destroy();
  });
}

type ResourceRecord = Exclude<Answer, OptAnswer>;

function records(section: Answer[] | undefined): ResourceRecord[] {
  return (section ?? []).filter((record): record is ResourceRecord => record.type !== 'OPT' && (record.class ?? 'IN') === 'IN');
}

function negativeTtl(reply: Packet): number | undefined {
  const soa = records(reply.authorities).find((record) => record.type === 'SOA');
  return soa?.type === 'SOA' ? Math.min(soa.ttl ?? 0, soa.data.minimum ?? 0) : undefined;
}

function value(record: ResourceRecord): RecordValue {
  switch (record.type) {
    case 'MX':
      // node gives a null MX (RFC 7505) as an empty exchange, and (since 24) labels the type.
      return { exchange: record.data.exchange === '.' ? '' : record.data.exchange, priority: record.data.preference ?? 0, type: 'MX' };
    case 'TXT': {
      const chunks = Array.isArray(record.data) ? record.data : [record.data];
      return chunks.map((chunk) => (typeof chunk === 'string' ? chunk : chunk.toString('latin1')));
    }
    case 'AAAA':
      // RFC 5952 text, as inet_ntop gives it to node (dns-packet writes ::ffff:102:304).
      return new net.SocketAddress({ address: String(record.data), family: 'ipv6' }).address;
    default:
      return String(record.data);
  }
}

function extract(reply: Packet, name: string, type: CachedType): WireAnswer {
  const rcode = (reply.flags ?? 0) & 0xf;
  if (rcode !== 0) {
    const code = RCODE_ERRORS[rcode] ?? 'EBADRESP';
    throw new DnsLookupError(code, name, type, code === 'ENOTFOUND' ? negativeTtl(reply) : undefined);
  }
  // Follow the CNAME chain from the question (the answer section may carry it, RFC 1034 §3.6.2).
  const all = records(reply.answers);
  let owner = canonicalName(name);
  let ttl = Infinity;
  for (let hops = 0; type !== 'CNAME' && hops < 8; hops++) {
    const alias = all.find((record) => record.type === 'CNAME' && record.name.toLowerCase() === owner);
    if (!alias) break;
    ttl = Math.min(ttl, alias.ttl ?? 0);
    owner = String(alias.data).toLowerCase();
  }
  const matching = all.filter((record) => record.type === type && record.name.toLowerCase() === owner);
  if (matching.length === 0) throw new DnsLookupError('ENODATA', name, type, negativeTtl(reply));
  for (const record of matching) ttl = Math.min(ttl, record.ttl ?? 0);
  return { records: matching.map(value), ttl };
}

/**
 * Asks each server in turn, `tries` rounds, until one gives an answer or a definite
 * negative; the last error otherwise (ETIMEOUT, ESERVFAIL…), as node's resolver would.
 */
const lookupSeconds = new Histogram({
  name: `${METRIC_PREFIX}dns_lookup_seconds`,
  help: 'DNS questions sent to the configured servers (cache misses and fresh lookups), by record type and result (an answer, NXDOMAIN/NODATA, or an error code)',
  labelNames: ['type', 'result'],
  buckets: SECONDS_BUCKETS,
});

export async function lookup(name: string, type: CachedType, options: WireOptions): Promise<WireAnswer> {
  const end = lookupSeconds.startTimer({ type });
  try {
    const answer = await ask(name, type, options);
    end({ result: 'answer' });
    return answer;
  } catch (err) {
    end({ result: err instanceof DnsLookupError ? err.code : 'error' });
    throw err;
  }
}

async function ask(name: string, type: CachedType, options: WireOptions): Promise<WireAnswer> {
  // A name no server could be asked about (an SPF include from an untrusted record): at once.
  if (!validName(canonicalName(name))) throw new DnsLookupError('EBADNAME', name, type);
  const query = question(name, type);
  const message = dnsPacket.encode(query);
  let last: DnsLookupError = new DnsLookupError('ECONNREFUSED', name, type);
  for (let attempt = 0; attempt < options.tries; attempt++) {
    for (const server of options.servers) {
      let reply: Packet;
      try {
        reply = await overUdp(server, message, query, options.timeout);
        if ((reply.flags ?? 0) & dnsPacket.TRUNCATED_RESPONSE) reply = await overTcp(server, query, options.timeout);
      } catch (err) {
        last = new DnsLookupError((err as NodeJS.ErrnoException).code ?? 'ECONNREFUSED', name, type);
        last.server = `${server.host}:${server.port}`;
        continue;
      }
      try {
        return extract(reply, name, type);
      } catch (err) {
        if (err instanceof DnsLookupError) err.server = `${server.host}:${server.port}`;
        if (!(err instanceof DnsLookupError) || !RETRYABLE.has(err.code)) throw err;
        last = err;
      }
    }
  }
  throw last;
}
