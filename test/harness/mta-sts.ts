import https from 'node:https';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import type { DnsServer } from './dns-server.ts';
import { testCertificate } from './tls.ts';

export interface PublishedPolicy {
  mode: 'enforce' | 'testing' | 'none';
  mx: string[];
  /** Seconds; default one day, as Gmail publishes. */
  maxAge?: number;
  /** The `id=` of the TXT record; a new one tells senders to fetch again. Default `1`. */
  id?: string;
}

/**
 * The MTA-STS policy hosts of the test domains (RFC 8461 §3): one HTTPS server on loopback
 * that answers for every `mta-sts.<domain>` with a certificate for that name from the test
 * CA (chosen by SNI), and the `_mta-sts` TXT and policy host A records in the test DNS.
 */
export class PolicyServer {
  readonly host: string;
  readonly port: number;
  /** Every request, as `host path`: how often senders fetched. */
  readonly requests: string[] = [];
  #server: https.Server;
  #dns: DnsServer;
  #policies = new Map<string, string>();
  #contexts = new Map<string, Promise<tls.SecureContext>>();

  private constructor(server: https.Server, dns: DnsServer, host: string, port: number) {
    this.#server = server;
    this.#dns = dns;
    this.host = host;
    this.port = port;
  }

  static async start(dns: DnsServer, host = '127.0.0.8'): Promise<PolicyServer> {
    let self: PolicyServer | undefined;
    const server = https.createServer(
      {
        SNICallback: (servername, callback) => {
          if (!self) return callback(new Error('not ready'));
          self.#context(servername).then((context) => callback(null, context), callback);
        },
      },
      (request, response) => {
        const name = (request.headers.host ?? '').replace(/:\d+$/, '').toLowerCase();
        self!.requests.push(`${name} ${request.url}`);
        const policy = self!.#policies.get(name);
        if (request.url !== '/.well-known/mta-sts.txt' || policy === undefined) {
          response.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
          return;
        }
        response.writeHead(200, { 'content-type': 'text/plain' }).end(policy);
      },
    );
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, host, () => resolve());
    });
    self = new PolicyServer(server, dns, host, (server.address() as AddressInfo).port);
    return self;
  }

  /** Publishes (or replaces) the policy of `domain`: TXT record, policy host address, policy file. */
  publish(domain: string, policy: PublishedPolicy): this {
    const host = `mta-sts.${domain}`;
    const lines = ['version: STSv1', `mode: ${policy.mode}`, ...policy.mx.map((mx) => `mx: ${mx}`), `max_age: ${policy.maxAge ?? 86400}`];
    this.#policies.set(host, lines.join('\r\n') + '\r\n');
    this.#dns.set(`_mta-sts.${domain}`, [{ type: 'TXT', data: `v=STSv1; id=${policy.id ?? '1'}` }]);
    this.#dns.set(host, [{ type: 'A', data: this.host }]);
    return this;
  }

  /** Makes the policy file unreachable (404) while the TXT record stays: a broken policy host. */
  breakFile(domain: string): this {
    this.#policies.delete(`mta-sts.${domain}`);
    return this;
  }

  /** How many times the policy of `domain` was fetched. */
  fetches(domain: string): number {
    return this.requests.filter((r) => r.startsWith(`mta-sts.${domain} `)).length;
  }

  #context(servername: string): Promise<tls.SecureContext> {
    let context = this.#contexts.get(servername);
    if (!context) {
      context = testCertificate([servername]).then(({ key, cert }) => tls.createSecureContext({ key, cert }));
      this.#contexts.set(servername, context);
    }
    return context;
  }

  close(): Promise<void> {
    this.#server.closeAllConnections();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}
