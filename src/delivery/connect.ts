import net from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import type { Config } from '../config/index.ts';
import type { Resolve } from '../dns/index.ts';
import { canonicalAddress } from '../ip/index.ts';
import type { Egress } from '../identity/index.ts';
import { clip, failure, formatReply, type Outcome, type Said } from '../smtp/index.ts';
import { openSession, UpstreamError, type UpstreamSession } from '../upstream/index.ts';
import type { Destination, HopAuth, NextHop } from './destination.ts';

/** An open session to one host of a destination, and which host it is. */
export interface Connected {
  session: UpstreamSession;
  mxHost: string;
  mxIp: string;
  /** Hosts tried before this one and not used, each with the reason. */
  skipped: string[];
  /** MTA-STS testing mode: why enforce mode would not have delivered here (RFC 8461 §5: deliver, and report). */
  wouldFail?: string[];
  /** The user the session authenticated as (a route with AUTH). */
  authUser?: string;
}

export interface ConnectOptions {
  delivery: Config['delivery'];
  resolve: Resolve;
  /** Extra TLS options for upstream STARTTLS (a test CA). */
  tls?: ConnectionOptions;
}

/** Outbound is IPv4 unless the egress itself is IPv6: receivers refuse IPv6 senders without a verified PTR. */
async function addressesOf(name: string, egress: Egress, resolve: Resolve): Promise<string[]> {
  const literal = canonicalAddress(name);
  if (literal) return [literal];
  return resolve(name, net.isIPv6(egress.bind) ? 'AAAA' : 'A');
}

/** What MTA-STS enforce mode would have objected to in this session (RFC 8461 §4, §5). */
function enforceObjections(hop: NextHop, session: UpstreamSession): string[] | undefined {
  const objections: string[] = [];
  if (hop.outsidePolicy) objections.push(`${hop.name} is not an MX host of the policy`);
  const tls = session.tls;
  if (!tls) objections.push('no TLS (STARTTLS not offered)');
  else if (!tls.authorized) {
    objections.push(`certificate not verified (${tls.authorizationError ?? 'unknown reason'}${tls.certificateNames ? `; it names ${tls.certificateNames}` : ''})`);
  }
  return objections.length ? objections : undefined;
}

/** RFC 4954 AUTH with the route's credentials; a refusal is the route's problem, so the client hears 4xx and retries. */
async function authenticate(connected: Connected, auth: HopAuth, destination: Destination): Promise<Outcome | undefined> {
  const where = `${destination.label} at ${connected.mxHost} [${connected.mxIp}]`;
  try {
    const reply = await connected.session.auth(auth.user, auth.password, { allowCleartext: auth.allowCleartext });
    if (reply.code === 235) return undefined;
    await connected.session.quit();
    return failure('temporary', 451, '4.7.0', `${where} refused AUTH as ${auth.user}: ${formatReply(reply)}; fix the user or password of that route`);
  } catch (err) {
    connected.session.close();
    return failure('temporary', 451, '4.7.0', `${where}: AUTH as ${auth.user} failed (${(err as Error).message})`);
  }
}

/**
 * Tries each host of the destination in order, and each of its addresses, until one greets
 * (RFC 5321 §5.1: a host that cannot be reached, or refuses the session, means the next)
 * and meets the destination's TLS policy: when verified TLS is required, a host without
 * STARTTLS, with a failed handshake or with a certificate that does not verify for its name
 * gets nothing but QUIT, and the next host is tried. Only when every host failed is the
 * recipient deferred: `451 4.7.5` when TLS was the reason, `451 4.4.1` otherwise.
 */
export async function connectDestination(destination: Destination, egress: Egress, options: ConnectOptions): Promise<Connected | Outcome> {
  const { tls: policy, auth } = destination;
  const verify = policy.requiredBy.length > 0;
  // Credentials go only over TLS unless the route allows otherwise: a host without it is of no use.
  const starttls = verify || (auth && !auth.allowCleartext) ? 'required' : 'opportunistic';
  const attempts: string[] = [];
  // The last host that refused the session (greeting or EHLO/HELO): the playbook explains that reply.
  let refusal: (Said & { mxIp: string }) | undefined;
  let tlsFailures = 0;
  let withoutRequireTls = 0;
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
      let session: UpstreamSession;
      try {
        session = await openSession({
          host: ip,
          port: hop.port,
          hostname: hop.name,
          localAddress: egress.bind,
          helo: egress.helo,
          starttls,
          verify,
          tlsOptions: options.tls,
          timeouts: {
            connect: options.delivery.connectTimeout,
            greeting: options.delivery.commandTimeout,
            command: options.delivery.commandTimeout,
            // RFC 5321 §4.5.3.2.4: the 354 is a command's reply like any other; left out, the
            // session's own 2 min would hold a tarpit's DATA whatever commandTimeout says.
            dataStart: options.delivery.commandTimeout,
            dataBlock: options.delivery.dataTimeout,
            dataDone: options.delivery.dataTimeout,
          },
        });
      } catch (err) {
        // Only a 4xx/5xx is the host refusing the session: a 2xx it sent unasked (a protocol
        // error) is no refusal, and its code must not become the client's (RFC 3463 §3.1: the
        // enhanced code's class matches the reply's).
        const refused = err instanceof UpstreamError && err.kind !== 'tls' && err.reply && err.reply.code >= 400 ? err.reply : undefined;
        if (refused) refusal = { reply: refused, mxHost: hop.name, mxIp: ip };
        const why = refused ? formatReply(refused) : (err as Error).message;
        attempts.push(`${hop.name} [${ip}]: ${why}`);
        if (starttls === 'required' && err instanceof UpstreamError && err.kind === 'tls') tlsFailures++;
        continue;
      }
      // RFC 8689 §4.2.1: REQUIRETLS mail goes only to a host that takes the requirement on.
      if (policy.requireTls && !session.extensions.has('REQUIRETLS')) {
        await session.quit();
        attempts.push(`${hop.name} [${ip}]: does not offer REQUIRETLS`);
        withoutRequireTls++;
        continue;
      }
      const connected: Connected = { session, mxHost: hop.name, mxIp: ip, skipped: attempts };
      if (policy.mtaSts?.mode === 'testing') {
        const objections = enforceObjections(hop, session);
        if (objections) connected.wouldFail = objections;
      }
      if (auth) {
        const refused = await authenticate(connected, auth, destination);
        if (refused) return refused;
        connected.authUser = auth.user;
      }
      return connected;
    }
  }
  const tried = attempts.join('; ');
  // An implicit MX (RFC 5321 §5.1) whose name has no address: nothing will ever accept the mail.
  if (!anyAddress && destination.via === 'implicit' && attempts.every((a) => /ENODATA|ENOTFOUND/.test(a))) {
    return failure('permanent', 550, '5.1.2', `no mail server for ${destination.hops[0].name} (no MX and no address record)`);
  }
  // RFC 8689 §5: 5.7.30 when no host takes REQUIRETLS on; the sender learns its requirement cannot be met.
  if (withoutRequireTls > 0 && withoutRequireTls === attempts.length) {
    return failure('permanent', 550, '5.7.30', `REQUIRETLS support required: no mail server of ${destination.label} offers it (${tried})`);
  }
  if (tlsFailures + withoutRequireTls > 0) {
    const demand = verify
      ? `needs TLS with a certificate that verifies for the server's name (${policy.requiredBy.join(', ')})`
      : 'gets its credentials only over TLS';
    return failure('temporary', 451, '4.7.5', `${destination.label} ${demand}, and no server provided it; nothing was sent (${tried})`);
  }
  const said = refusal && { reply: refusal.reply, mxHost: refusal.mxHost };
  // The last host refused the session for now (Yahoo's 421 [TSS04] at the greeting): the
  // client hears its own enhanced code and words, as at any other stage. A 5xx there defers
  // too (a host that will not talk is no verdict on the message), quoted in the 4.4.1 text.
  if (refusal && refusal.reply.code < 500 && attempts.at(-1)?.startsWith(`${refusal.mxHost} [${refusal.mxIp}]: `)) {
    return failure('temporary', 451, refusal.reply.enhanced ?? '4.0.0', `${refusal.mxHost} [${refusal.mxIp}] said: ${clip(refusal.reply.lines.join(' '))}`, said);
  }
  return failure('temporary', 451, '4.4.1', `no mail server of the destination could be reached (${tried})`, said);
}
