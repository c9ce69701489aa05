import net from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import type { Config } from '../config/index.ts';
import type { Resolve } from '../dns/index.ts';
import type { Egress } from '../identity/index.ts';
import { failure, type Outcome, type Said } from '../proxy/outcome.ts';
import { openSession, UpstreamError, formatReply, type UpstreamSession } from '../upstream/index.ts';
import type { Destination } from './destination.ts';

/** An open session to one host of a destination, and which host it is. */
export interface Connected {
  session: UpstreamSession;
  mxHost: string;
  mxIp: string;
}

export interface ConnectOptions {
  delivery: Config['delivery'];
  resolve: Resolve;
  /** Extra TLS options for upstream STARTTLS (a test CA). */
  tls?: ConnectionOptions;
}

/** Outbound is IPv4 unless the egress itself is IPv6: receivers refuse IPv6 senders without a verified PTR. */
async function addressesOf(name: string, egress: Egress, resolve: Resolve): Promise<string[]> {
  if (net.isIP(name)) return [name];
  return resolve(name, net.isIPv6(egress.bind) ? 'AAAA' : 'A');
}

/**
 * Tries each host of the destination in order, and each of its addresses, until one greets
 * (RFC 5321 §5.1: a host that cannot be reached, or refuses the session, means the next).
 * Only when every host failed is the recipient deferred: `451 4.4.1`.
 */
export async function connectDestination(destination: Destination, egress: Egress, options: ConnectOptions): Promise<Connected | Outcome> {
  const attempts: string[] = [];
  // The last host that refused the session (greeting or EHLO/HELO): the playbook explains that reply.
  let refusal: Said | undefined;
  let anyAddress = false;
  for (const hop of destination.hops) {
    let addresses: string[];
    try {
      addresses = await addressesOf(hop.name, egress, options.resolve);
    } catch (err) {
      attempts.push(`${hop.name}: ${(err as NodeJS.ErrnoException).code ?? 'lookup failed'}`);
      continue;
    }
    anyAddress ||= addresses.length > 0;
    for (const ip of addresses) {
      try {
        const session = await openSession({
          host: ip,
          port: hop.port,
          hostname: hop.name,
          localAddress: egress.bind,
          helo: egress.helo,
          starttls: 'opportunistic',
          tlsOptions: options.tls,
          timeouts: {
            connect: options.delivery.connectTimeout,
            greeting: options.delivery.commandTimeout,
            command: options.delivery.commandTimeout,
            dataBlock: options.delivery.dataTimeout,
            dataDone: options.delivery.dataTimeout,
          },
        });
        return { session, mxHost: hop.name, mxIp: ip };
      } catch (err) {
        if (err instanceof UpstreamError && err.reply) refusal = { reply: err.reply, mxHost: hop.name };
        const why = err instanceof UpstreamError && err.reply ? formatReply(err.reply) : (err as Error).message;
        attempts.push(`${hop.name} [${ip}]: ${why}`);
      }
    }
  }
  // An implicit MX (RFC 5321 §5.1) whose name has no address: nothing will ever accept the mail.
  if (!anyAddress && destination.via === 'implicit' && attempts.every((a) => /ENODATA|ENOTFOUND/.test(a))) {
    return failure('permanent', 550, '5.1.2', `no mail server for ${destination.hops[0].name} (no MX and no address record)`);
  }
  return failure('temporary', 451, '4.4.1', `no mail server of the destination could be reached (${attempts.join('; ')})`, refusal);
}
