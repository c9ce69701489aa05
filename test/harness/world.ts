import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { parseConfig, type Config } from '../../src/config/index.ts';
import { createLogger } from '../../src/observability/index.ts';
import { startRelay, type Relay } from '../../src/relay.ts';
import { Destination, type DestinationOptions, type DestinationScript } from './destination.ts';
import { DnsServer } from './dns-server.ts';
import { PolicyServer, type PublishedPolicy } from './mta-sts.ts';
import { testCa } from './tls.ts';

/** Every JSON line the relay logged, for assertions on what an admin would read. */
export class LogCapture extends Writable {
  readonly records: Record<string, unknown>[] = [];
  #waiters: { match: (r: Record<string, unknown>) => boolean; resolve: (r: Record<string, unknown>) => void }[] = [];

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: () => void): void {
    for (const line of chunk.toString().split('\n').filter(Boolean)) {
      const record = JSON.parse(line) as Record<string, unknown>;
      this.records.push(record);
      this.#waiters = this.#waiters.filter((w) => (w.match(record) ? (w.resolve(record), false) : true));
    }
    callback();
  }

  /** Resolves with the first record (already logged or still to come) that matches. */
  waitFor(match: (r: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
    const found = this.records.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve) => this.#waiters.push({ match, resolve }));
  }

  transactions(): Record<string, unknown>[] {
    return this.records.filter((r) => r.msg === 'transaction');
  }
}

/** A port number free on 127.0.0.1 right now; destinations on other 127.0.0.x addresses share it as "port 25". */
export async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** One MX host: a simulated destination on its own loopback address. */
export interface MxSpec {
  name: string;
  ip: string;
  /** Overrides the domain's `starttls` for this host. */
  starttls?: boolean;
  /** The names its certificate carries instead of [name, ip] (a certificate for the wrong host). */
  certificateNames?: string[];
}

export interface DestinationSpec {
  /** The recipient domain, e.g. gmail.test. */
  domain: string;
  /** MX host names with their loopback addresses, in preference order; each one listens. */
  mx: MxSpec[];
  script?: DestinationScript;
  starttls?: boolean;
  /** After STARTTLS, do not offer REQUIRETLS. */
  hideRequireTls?: boolean;
  /** A smarthost: AUTH needed before MAIL (see Destination). */
  auth?: DestinationOptions['auth'];
  /** The MTA-STS policy the domain publishes. */
  mtaSts?: PublishedPolicy;
}

export interface WorldOptions {
  destinations?: DestinationSpec[];
  /** Config keys merged over the world's defaults (shallow per top-level key); a function gets the internet first (its ports). */
  config?: Record<string, unknown> | ((internet: Internet) => Record<string, unknown>);
  /** false: destinations do not verify what arrives (no DNS queries of theirs in the server's log). */
  verify?: boolean;
  /** Egress addresses with the PTR name each gets (forward-confirmed unless `confirmed: false`). */
  egress?: { ip: string; ptr?: string; confirmed?: boolean }[];
  /** MX hosts that exist in DNS but have nothing listening (connections refused). */
  deadMx?: { domain: string; name: string; ip: string; preference: number }[];
  /** Runs once the internet is up and before the relay starts: state the relay should find there (a seeded history in its state file). */
  prepare?: (internet: Internet) => Promise<void> | void;
}

export const GMAIL: DestinationSpec = { domain: 'gmail.test', mx: [{ name: 'mx.gmail.test', ip: '127.0.0.10' }] };
export const OUTLOOK: DestinationSpec = { domain: 'outlook.test', mx: [{ name: 'mx.outlook.test', ip: '127.0.0.11' }] };
/** The sending organisation's own MX: where status notifications to its senders arrive. */
export const CORP: DestinationSpec = { domain: 'example.test', mx: [{ name: 'mx.example.test', ip: '127.0.0.12' }] };

/**
 * A simulated internet on loopback (DESIGN §9): a DNS server with the test zones, and
 * simulated destinations that verify what they receive with mailauth against it.
 */
export class Internet {
  readonly dns: DnsServer;
  /** Each domain's first MX host. */
  readonly destinations: Map<string, Destination>;
  /** Every MX host by name. */
  readonly hosts: Map<string, Destination>;
  /** The MTA-STS policy hosts (the relay fetches from its port instead of 443). */
  readonly policies: PolicyServer;
  readonly mxPort: number;
  readonly egress: { ip: string; ptr?: string; confirmed?: boolean }[];
  /** This internet's own directory for the relays' state: their delivery memo (memo.path), never shared with another test. */
  readonly stateDir: string;

  protected constructor(dns: DnsServer, hosts: Map<string, Destination>, destinations: Map<string, Destination>, policies: PolicyServer, mxPort: number, egress: Internet['egress'], stateDir: string) {
    this.stateDir = stateDir;
    this.dns = dns;
    this.hosts = hosts;
    this.destinations = destinations;
    this.policies = policies;
    this.mxPort = mxPort;
    this.egress = egress;
  }

  static async start(options: WorldOptions = {}): Promise<Internet> {
    const dns = await DnsServer.start();
    const mxPort = await freePort();
    const destinations = new Map<string, Destination>();
    const hosts = new Map<string, Destination>();
    const egress = options.egress ?? [{ ip: '127.0.0.2', ptr: 'relay-out.example.test' }];
    const policies = await PolicyServer.start(dns);
    try {
      for (const spec of options.destinations ?? [GMAIL, OUTLOOK, CORP]) {
        for (const [i, mx] of spec.mx.entries()) {
          dns.add(spec.domain, { type: 'MX', data: { preference: 10 * (i + 1), exchange: mx.name } });
          dns.add(mx.name, { type: 'A', data: mx.ip });
          // Domains may share MX hosts, as they do at the big providers.
          let host = hosts.get(mx.name);
          if (!host) {
            host = await Destination.start({
              host: mx.ip,
              port: mxPort,
              name: mx.name,
              dnsServer: options.verify === false ? undefined : dns.address,
              script: spec.script,
              starttls: mx.starttls ?? spec.starttls,
              certificateNames: mx.certificateNames,
              hideRequireTls: spec.hideRequireTls,
              auth: spec.auth,
            });
            hosts.set(mx.name, host);
          }
          if (i === 0) destinations.set(spec.domain, host);
        }
        if (spec.mtaSts) policies.publish(spec.domain, spec.mtaSts);
      }
      for (const dead of options.deadMx ?? []) {
        dns.add(dead.domain, { type: 'MX', data: { preference: dead.preference, exchange: dead.name } });
        dns.add(dead.name, { type: 'A', data: dead.ip });
      }
      for (const e of egress) {
        if (e.ptr) dns.addPtr(e.ip, e.ptr, { forward: e.confirmed !== false });
      }
      // The sending organisation: SPF authorizes the egress addresses.
      dns.add('example.test', { type: 'TXT', data: `v=spf1 ${egress.map((e) => `ip4:${e.ip}`).join(' ')} -all` });
    } catch (err) {
      await Promise.all([...hosts.values()].map((d) => d.close()));
      await policies.close();
      await dns.close();
      throw err;
    }
    return new Internet(dns, hosts, destinations, policies, mxPort, egress, mkdtempSync(path.join(tmpdir(), 'relay-state-')));
  }

  destination(domain: string): Destination {
    const destination = this.destinations.get(domain);
    if (!destination) throw new Error(`no destination for ${domain}`);
    return destination;
  }

  /** The relay's `dns` section for this internet; `cache` settings as the config takes them. */
  dnsSettings(cache?: Record<string, unknown>): Record<string, unknown> {
    return { servers: [this.dns.address], timeout: '1s', tries: 1, ...(cache && { cache }) };
  }

  /** The relay's `delivery` section for this internet, with `extra` keys over it. */
  deliverySettings(extra: Record<string, unknown> = {}): Record<string, unknown> {
    return { port: this.mxPort, connectTimeout: '2s', commandTimeout: '10s', dataTimeout: '20s', ...extra };
  }

  /** The MX host of that name. */
  host(name: string): Destination {
    const host = this.hosts.get(name);
    if (!host) throw new Error(`no MX host ${name}`);
    return host;
  }

  /** A relay config (before validation) pointed at this internet, with `overrides` per top-level key. */
  relayConfig(overrides: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      listeners: [{ host: '127.0.0.1', port: 0 }],
      clients: { networks: ['127.0.0.1/32'] },
      egress: this.egress.map((e) => ({ ip: e.ip })),
      dns: this.dnsSettings(),
      delivery: this.deliverySettings(),
      log: { level: 'info' },
      // Restarted relays of one test find their memo again; other tests' memos stay apart.
      memo: { path: path.join(this.stateDir, 'memo.sqlite') },
      // Every relay of the suite on a port of its own: the default 9090 would be taken by the first.
      http: { host: '127.0.0.1', port: 0 },
      ...overrides,
    };
  }

  async close(): Promise<void> {
    await Promise.all([...this.hosts.values()].map((d) => d.close()));
    await this.policies.close();
    await this.dns.close();
    rmSync(this.stateDir, { recursive: true, force: true });
  }
}

/** The internet plus the relay running in this process, its log captured. */
export class World extends Internet {
  readonly relay: Relay;
  readonly logs: LogCapture;
  readonly config: Config;

  private constructor(internet: Internet, relay: Relay, logs: LogCapture, config: Config) {
    super(internet.dns, internet.hosts, internet.destinations, internet.policies, internet.mxPort, internet.egress, internet.stateDir);
    this.relay = relay;
    this.logs = logs;
    this.config = config;
  }

  get port(): number {
    return this.relay.ports[0];
  }

  static override async start(options: WorldOptions = {}): Promise<World> {
    const internet = await Internet.start(options);
    try {
      const overrides = typeof options.config === 'function' ? options.config(internet) : options.config;
      await options.prepare?.(internet);
      const config = parseConfig(internet.relayConfig(overrides));
      const logs = new LogCapture();
      // The relay trusts the test CA as a deployment trusts the public ones, and fetches
      // MTA-STS policies from the test policy server's port.
      const relay = await startRelay(config, createLogger(config.log.level, logs), { upstreamTls: { ca: await testCa() }, mtaStsPort: internet.policies.port });
      return new World(internet, relay, logs, config);
    } catch (err) {
      await internet.close();
      throw err;
    }
  }

  override async close(): Promise<void> {
    await this.relay.close();
    await super.close();
  }
}

/** A small message with the given headers, CRLF line endings. */
export function message(options: { from?: string; to?: string; subject?: string; body?: string; messageId?: string } = {}): string {
  const headers = [
    `From: Alice <${options.from ?? 'alice@example.test'}>`,
    `To: ${(options.to ?? 'bob@gmail.test').split(',').map((address) => `<${address.trim()}>`).join(', ')}`,
    `Subject: ${options.subject ?? 'hello'}`,
    `Date: Mon, 23 Nov 2026 09:00:00 +0000`,
    `Message-ID: <${options.messageId ?? `${Math.random().toString(36).slice(2)}@example.test`}>`,
  ];
  return `${headers.join('\r\n')}\r\n\r\n${options.body ?? 'Hello Bob.\r\n'}`;
}
