import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket from 'dns-packet';
import type { Answer, DecodedPacket, Question } from 'dns-packet';

/**
 * An authoritative DNS server on loopback, for tests and for `hygiene-relay demo`: the
 * relay, mailauth and node's resolver all query it over the real wire protocol (UDP, and
 * TCP after a truncated UDP answer), so what they see is what a real zone would give.
 */

export type RecordData =
  | { type: 'A' | 'AAAA' | 'PTR' | 'CNAME' | 'NS'; data: string; ttl?: number }
  /** `exchange: '.'` is a null MX (RFC 7505). */
  | { type: 'MX'; data: { preference: number; exchange: string }; ttl?: number }
  /**
   * A single string longer than 255 bytes is split into 255-byte character-strings. `SPF` is
   * type 99 (RFC 4408 §3.1.1, TXT's format), which RFC 7208 §14.1 retired: served so that a
   * test can tell that nobody uses it.
   */
  | { type: 'TXT' | 'SPF'; data: string | string[]; ttl?: number };

export type RecordType = RecordData['type'];

/**
 * `timeout` never answers; `truncated` answers over UDP with TC set (the answer does not fit)
 * and never over TCP, so a client that retries over TCP as it must (RFC 7766 §5) gets
 * nothing; the others answer with that rcode.
 */
export type Fault = 'servfail' | 'nxdomain' | 'timeout' | 'refused' | 'truncated';

export interface DnsServerOptions {
  /** Loopback address to serve on; 127.0.0.1 by default. */
  host?: string;
  /** 0 (the default) picks a port free for both UDP and TCP. */
  port?: number;
  /** TTL of the SOA sent with NXDOMAIN/NODATA, which resolvers use for negative caching (RFC 2308). */
  negativeTtl?: number;
}

export interface QueryLogEntry {
  /** Lower-cased, without the trailing dot. */
  name: string;
  /** Upper-case type mnemonic as dns-packet names it (`UNKNOWN_n` for types it does not know). */
  type: string;
  transport: 'udp' | 'tcp';
}

/** Wire-ready: TTL filled in, TXT already split into character-strings, names without the trailing dot. */
type StoredRecord =
  | { type: 'A' | 'AAAA' | 'PTR' | 'CNAME' | 'NS'; ttl: number; data: string }
  | { type: 'MX'; ttl: number; data: { preference: number; exchange: string } }
  | { type: 'TXT' | 'SPF'; ttl: number; data: string[] };

const DEFAULT_TTL = 300;
const DEFAULT_NEGATIVE_TTL = 60;
// RFC 1035 §4.2.1: without EDNS a UDP answer is at most 512 bytes.
const UDP_LIMIT = 512;
// What we advertise back to EDNS clients (the DNS flag day 2020 value).
const EDNS_PAYLOAD = 1232;
const MAX_CNAME_CHAIN = 8;
const MAX_TCP_FRAME_BACKLOG = 64 * 1024;

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
const FAULT_RCODE = { servfail: RCODE.SERVFAIL, nxdomain: RCODE.NXDOMAIN, refused: RCODE.REFUSED } as const;

export class DnsServer {
  readonly host: string;
  readonly port: number;
  /** `host:port` (IPv6 bracketed), as `dns.Resolver#setServers` and the relay's `dns.servers` take it. */
  readonly address: string;
  readonly queries: QueryLogEntry[] = [];
  negativeTtl: number;

  #records = new Map<string, StoredRecord[]>();
  #faults = new Map<string, Fault>();
  #udp: dgram.Socket;
  #tcp: net.Server;
  #connections = new Set<net.Socket>();
  #closed: Promise<void> | undefined;

  private constructor(udp: dgram.Socket, tcp: net.Server, host: string, port: number, negativeTtl: number) {
    this.#udp = udp;
    this.#tcp = tcp;
    this.host = host;
    this.port = port;
    this.address = net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
    this.negativeTtl = negativeTtl;
    udp.on('message', (msg, rinfo) => this.#onUdp(msg, rinfo));
    // A send to a client that has gone away must not take the test process down.
    udp.on('error', () => {});
    tcp.on('connection', (socket) => this.#onTcp(socket));
    tcp.on('error', () => {});
  }

  static async start(options: DnsServerOptions = {}): Promise<DnsServer> {
    const host = options.host ?? '127.0.0.1';
    if (!net.isIP(host)) throw new Error(`DnsServer: host must be an IP address, got ${JSON.stringify(host)}`);
    const wanted = options.port ?? 0;
    const negativeTtl = options.negativeTtl ?? DEFAULT_NEGATIVE_TTL;
    // UDP picks the free port, TCP has to get the same number; another process may hold it
    // for TCP only, so try again with a fresh UDP port rather than fail.
    for (let attempt = 0; ; attempt++) {
      const udp = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
      await new Promise<void>((resolve, reject) => {
        udp.once('error', reject);
        udp.bind(wanted, host, () => {
          udp.off('error', reject);
          resolve();
        });
      });
      const port = udp.address().port;
      const tcp = net.createServer();
      try {
        await new Promise<void>((resolve, reject) => {
          tcp.once('error', reject);
          tcp.listen({ port, host, exclusive: true }, () => {
            tcp.off('error', reject);
            resolve();
          });
        });
      } catch (error) {
        await new Promise<void>((resolve) => udp.close(() => resolve()));
        if (wanted !== 0 || attempt >= 20 || (error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
        continue;
      }
      return new DnsServer(udp, tcp, host, port, negativeTtl);
    }
  }

  /** Adds one record; an identical record (same type and data) is replaced, so only its TTL changes. */
  add(name: string, record: RecordData): this {
    checkName(name);
    const key = normalizeName(name);
    const stored = toStored(record);
    const list = this.#records.get(key) ?? [];
    const same = list.findIndex((r) => r.type === stored.type && sameData(r.data, stored.data));
    if (same >= 0) list[same] = stored;
    else list.push(stored);
    this.#records.set(key, list);
    return this;
  }

  /** Replaces every record of the types present in `records` at `name`; other types stay. */
  set(name: string, records: RecordData[]): this {
    const key = normalizeName(name);
    const types = new Set(records.map((r) => r.type));
    const kept = (this.#records.get(key) ?? []).filter((r) => !types.has(r.type));
    this.#records.set(key, kept);
    for (const record of records) this.add(name, record);
    return this;
  }

  /** Removes every record at `name`, or only those of `type`. */
  remove(name: string, type?: string): this {
    const key = normalizeName(name);
    if (type === undefined) {
      this.#records.delete(key);
    } else {
      const upper = type.toUpperCase();
      const kept = (this.#records.get(key) ?? []).filter((r) => r.type !== upper);
      if (kept.length > 0) this.#records.set(key, kept);
      else this.#records.delete(key);
    }
    return this;
  }

  /** PTR for `ip` under in-addr.arpa/ip6.arpa; with `forward` (the default) also the A/AAAA back, so forward-confirmed reverse DNS holds. */
  addPtr(ip: string, hostname: string, options: { forward?: boolean; ttl?: number } = {}): this {
    const family = net.isIP(ip);
    if (family === 0) throw new Error(`DnsServer.addPtr: not an IP address: ${JSON.stringify(ip)}`);
    this.add(reverseName(ip), { type: 'PTR', data: hostname, ttl: options.ttl });
    if (options.forward ?? true) {
      this.add(hostname, { type: family === 4 ? 'A' : 'AAAA', data: ip, ttl: options.ttl });
    }
    return this;
  }

  /** Injects a failure for questions about `name` of `type` (`'*'` = any type); `null` clears it. A specific type wins over `'*'`. */
  fault(name: string, type: string, fault: Fault | null): this {
    const key = `${normalizeName(name)}|${type.toUpperCase()}`;
    if (fault === null) this.#faults.delete(key);
    else this.#faults.set(key, fault);
    return this;
  }

  /** Questions received matching `name` and/or `type` (both optional, case-insensitive). */
  count(name?: string, type?: string): number {
    const n = name === undefined ? undefined : normalizeName(name);
    const t = type?.toUpperCase();
    return this.queries.filter((q) => (n === undefined || q.name === n) && (t === undefined || q.type === t)).length;
  }

  resetLog(): void {
    this.queries.length = 0;
  }

  close(): Promise<void> {
    this.#closed ??= (async () => {
      for (const socket of this.#connections) socket.destroy();
      await Promise.all([
        new Promise<void>((resolve) => this.#udp.close(() => resolve())),
        new Promise<void>((resolve) => this.#tcp.close(() => resolve())),
      ]);
    })();
    return this.#closed;
  }

  #onUdp(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const response = this.#respond(msg, 'udp');
    if (!response) return;
    this.#udp.send(response, rinfo.port, rinfo.address, () => {});
  }

  #onTcp(socket: net.Socket): void {
    this.#connections.add(socket);
    socket.on('close', () => this.#connections.delete(socket));
    socket.on('error', () => {});
    let pending: Buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      // RFC 1035 §4.2.2 / RFC 7766: a connection carries any number of length-prefixed messages.
      while (pending.length >= 2) {
        const length = pending.readUInt16BE(0);
        if (pending.length < 2 + length) break;
        const msg = pending.subarray(2, 2 + length);
        pending = pending.subarray(2 + length);
        const response = this.#respond(msg, 'tcp');
        if (!response || socket.destroyed) continue;
        const prefix = Buffer.alloc(2);
        prefix.writeUInt16BE(response.length);
        socket.write(Buffer.concat([prefix, response]));
      }
      // A client that announces a frame it never finishes would otherwise grow this forever.
      if (pending.length > MAX_TCP_FRAME_BACKLOG) socket.destroy();
    });
  }

  /** The encoded response, or undefined when nothing must be sent (malformed input, a timeout fault). */
  #respond(msg: Buffer, transport: 'udp' | 'tcp'): Buffer | undefined {
    let query: DecodedPacket;
    try {
      query = dnsPacket.decode(msg);
    } catch {
      return undefined;
    }
    // Never answer a response: two servers pointed at each other would loop.
    if (query.flag_qr) return undefined;
    const questions = query.questions ?? [];
    for (const q of questions) {
      this.queries.push({ name: normalizeName(q.name), type: String(q.type).toUpperCase(), transport });
    }

    const opt = (query.additionals ?? []).find((a) => a.type === 'OPT');
    const limit =
      transport === 'tcp' ? 0xffff : Math.max(UDP_LIMIT, opt && 'udpPayloadSize' in opt ? opt.udpPayloadSize : 0);
    // The header's opcode and RD bit are not in dns-packet's types; read them off the wire.
    const rawFlags = msg.readUInt16BE(2);
    const opcode = (rawFlags >> 11) & 0xf;
    const rd = rawFlags & dnsPacket.RECURSION_DESIRED;

    const reply = (rcode: number, answers: Answer[] = [], authorities: Answer[] = []): Buffer => {
      const additionals: Answer[] = opt
        ? [{ type: 'OPT', name: '.', udpPayloadSize: EDNS_PAYLOAD, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false, options: [] }]
        : [];
      const flags = dnsPacket.AUTHORITATIVE_ANSWER | rd | (opcode << 11) | rcode;
      const full = dnsPacket.encode({ type: 'response', id: query.id, flags, questions, answers, authorities, additionals });
      if (full.length <= limit) return full;
      // RFC 2181 §9: rather than a partial RRset, send none and set TC so the client retries over TCP.
      return dnsPacket.encode({
        type: 'response',
        id: query.id,
        flags: flags | dnsPacket.TRUNCATED_RESPONSE,
        questions,
        additionals,
      });
    };

    if (opcode !== 0) return reply(RCODE.NOTIMP);
    if (questions.length !== 1) return reply(RCODE.FORMERR);
    const question = questions[0];
    if ((question.class ?? 'IN') !== 'IN') return reply(RCODE.REFUSED);

    const outcome = this.#resolve(question);
    if (outcome === 'timeout') return undefined;
    if (outcome === 'truncated') {
      if (transport === 'tcp') return undefined;
      return dnsPacket.encode({ type: 'response', id: query.id, flags: dnsPacket.AUTHORITATIVE_ANSWER | dnsPacket.TRUNCATED_RESPONSE | rd, questions });
    }
    return reply(outcome.rcode, outcome.answers, outcome.authorities);
  }

  #resolve(question: Question): 'timeout' | 'truncated' | { rcode: number; answers: Answer[]; authorities: Answer[] } {
    const qtype = String(question.type).toUpperCase();
    const answers: Answer[] = [];
    let owner = question.name;
    const seen = new Set<string>();
    for (;;) {
      const key = normalizeName(owner);
      const fault = this.#faults.get(`${key}|${qtype}`) ?? this.#faults.get(`${key}|*`);
      if (fault === 'timeout' || fault === 'truncated') return fault;
      if (fault !== undefined) {
        return { rcode: FAULT_RCODE[fault], answers, authorities: fault === 'nxdomain' ? [this.#soa(key)] : [] };
      }
      const records = this.#records.get(key) ?? [];
      const matching = records.filter((r) => r.type === qtype);
      if (matching.length > 0) {
        answers.push(...matching.map((r) => toAnswer(owner, r)));
        return { rcode: RCODE.NOERROR, answers, authorities: [] };
      }
      const cname = records.find((r) => r.type === 'CNAME');
      if (cname?.type === 'CNAME' && !seen.has(key) && seen.size < MAX_CNAME_CHAIN) {
        seen.add(key);
        answers.push(toAnswer(owner, cname));
        owner = cname.data;
        continue;
      }
      // RFC 6604: the rcode describes the last name of a CNAME chain.
      const rcode = records.length > 0 || this.#hasDescendant(key) ? RCODE.NOERROR : RCODE.NXDOMAIN;
      return { rcode, answers, authorities: [this.#soa(key)] };
    }
  }

  /** An empty non-terminal (a name with nothing of its own but records below it) exists: NODATA, not NXDOMAIN (RFC 8020). */
  #hasDescendant(key: string): boolean {
    const suffix = key === '' ? '' : `.${key}`;
    for (const name of this.#records.keys()) {
      if (name.endsWith(suffix) && name !== key) return true;
    }
    return false;
  }

  #soa(key: string): Answer {
    const apex = zoneApex(key);
    return {
      type: 'SOA',
      name: apex === '' ? '.' : apex,
      ttl: this.negativeTtl,
      data: {
        mname: apex === '' ? 'ns.test' : `ns.${apex}`,
        rname: apex === '' ? 'hostmaster.test' : `hostmaster.${apex}`,
        serial: 1,
        refresh: 3600,
        retry: 600,
        expire: 86400,
        // RFC 2308 §5: the negative TTL is the smaller of the SOA's TTL and its minimum field.
        minimum: this.negativeTtl,
      },
    };
  }
}

function normalizeName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

function checkName(name: string): void {
  const bare = name.replace(/\.$/, '');
  if (bare === '') return;
  const labels = bare.split('.');
  if (Buffer.byteLength(bare) > 253 || labels.some((l) => l.length === 0 || Buffer.byteLength(l) > 63)) {
    throw new Error(`DnsServer: not a valid domain name: ${JSON.stringify(name)}`);
  }
}

/**
 * The SOA owner for a negative answer. The server has no explicit zones, so the apex is
 * taken as the last two labels (example.com, in-addr.arpa), which is what a test zone
 * usually looks like.
 */
function zoneApex(key: string): string {
  const labels = key === '' ? [] : key.split('.');
  return labels.slice(-2).join('.');
}

function toStored(record: RecordData): StoredRecord {
  const ttl = record.ttl ?? DEFAULT_TTL;
  if (!Number.isInteger(ttl) || ttl < 0 || ttl > 0x7fffffff) throw new Error(`DnsServer: bad ttl ${ttl}`);
  switch (record.type) {
    case 'A':
      if (!net.isIPv4(record.data)) throw new Error(`DnsServer: A needs an IPv4 address, got ${JSON.stringify(record.data)}`);
      return { type: 'A', ttl, data: record.data };
    case 'AAAA':
      if (!net.isIPv6(record.data)) throw new Error(`DnsServer: AAAA needs an IPv6 address, got ${JSON.stringify(record.data)}`);
      return { type: 'AAAA', ttl, data: record.data };
    case 'PTR':
    case 'CNAME':
    case 'NS':
      checkName(record.data);
      return { type: record.type, ttl, data: record.data.replace(/\.$/, '') };
    case 'MX': {
      const { preference, exchange } = record.data;
      if (!Number.isInteger(preference) || preference < 0 || preference > 0xffff) {
        throw new Error(`DnsServer: bad MX preference ${preference}`);
      }
      checkName(exchange);
      return { type: 'MX', ttl, data: { preference, exchange: exchange === '.' ? '.' : exchange.replace(/\.$/, '') } };
    }
    case 'TXT':
    case 'SPF': {
      const strings = typeof record.data === 'string' ? splitCharacterStrings(record.data) : record.data;
      for (const s of strings) {
        if (Buffer.byteLength(s) > 255) throw new Error(`DnsServer: a ${record.type} character-string given as an array element must be at most 255 bytes`);
      }
      return { type: record.type, ttl, data: [...strings] };
    }
  }
}

/** Splits on byte boundaries, never inside a UTF-8 sequence. */
function splitCharacterStrings(text: string): string[] {
  if (text === '') return [''];
  const chunks: string[] = [];
  let current = '';
  for (const char of text) {
    if (Buffer.byteLength(current) + Buffer.byteLength(char) > 255) {
      chunks.push(current);
      current = '';
    }
    current += char;
  }
  chunks.push(current);
  return chunks;
}

function sameData(a: StoredRecord['data'], b: StoredRecord['data']): boolean {
  const canon = (d: StoredRecord['data']): string =>
    JSON.stringify(typeof d === 'string' ? d.toLowerCase() : d);
  return canon(a) === canon(b);
}

function toAnswer(owner: string, record: StoredRecord): Answer {
  const name = owner === '' ? '.' : owner;
  switch (record.type) {
    case 'MX':
      return { type: 'MX', name, ttl: record.ttl, data: { ...record.data } };
    case 'TXT':
      // dns-packet's TXT encoder replaces the array's strings with Buffers in place.
      return { type: 'TXT', name, ttl: record.ttl, data: [...record.data] };
    case 'SPF':
      // dns-packet has no SPF codec: the rdata as raw bytes, character-strings as TXT's (RFC 1035 §3.3.14).
      return { type: 'SPF', name, ttl: record.ttl, data: Buffer.concat(record.data.map((text) => Buffer.concat([Buffer.from([Buffer.byteLength(text)]), Buffer.from(text)]))) } as unknown as Answer;
    default:
      return { type: record.type, name, ttl: record.ttl, data: record.data };
  }
}

/** 192.0.2.1 -> 1.2.0.192.in-addr.arpa; IPv6 as nibbles under ip6.arpa (RFC 3596 §2.5). */
export function reverseName(ip: string): string {
  if (net.isIPv4(ip)) return `${ip.split('.').reverse().join('.')}.in-addr.arpa`;
  if (!net.isIPv6(ip)) throw new Error(`reverseName: not an IP address: ${JSON.stringify(ip)}`);
  return `${[...expandIpv6(ip)].reverse().join('.')}.ip6.arpa`;
}

/** The 32 hex digits of an IPv6 address, `::` and an embedded IPv4 tail expanded. */
function expandIpv6(ip: string): string {
  let text = ip.toLowerCase().replace(/%.*$/, '');
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4[1].split('.').map(Number);
    text = text.slice(0, -v4[1].length) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const headGroups = head === '' ? [] : head.split(':');
  const tailGroups = tail === undefined || tail === '' ? [] : tail.split(':');
  const missing = 8 - headGroups.length - tailGroups.length;
  const groups = [...headGroups, ...Array<string>(tail === undefined ? 0 : missing).fill('0'), ...tailGroups];
  return groups.map((g) => g.padStart(4, '0')).join('');
}
