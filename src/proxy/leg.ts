import { judgeDestination, type Policy, type Prediction, type ProfileVerdict, type Unsubscribe } from '../auth/index.ts';
import type { Destination, UpstreamLease } from '../delivery/index.ts';
import type { Egress } from '../identity/index.ts';
import { clip, failure, formatReply, outcomeOf, type Outcome, type Reply } from '../smtp/index.ts';
import { UpstreamError, type MessageSource } from '../upstream/index.ts';
import type { MailParams, RelayContext } from './context.ts';
import { explain, type Explanation } from './record.ts';
import type { RecipientResult } from './verdict.ts';

/** What a leg takes from its transaction. */
export interface LegOwner {
  /** The relay id, quoted in every reply passed on to the client. */
  id: string;
  sender: string;
  params: MailParams;
  egress: Egress;
  ctx: RelayContext;
}

/**
 * One destination's part of a transaction (DESIGN §1): the upstream session opened at the
 * destination's first recipient, the recipients it accepted, and its answer at DATA. Every
 * reply is turned into the client's outcome here, prefixed with who said it.
 */
export class Leg {
  readonly destination: Destination;
  readonly #owner: LegOwner;
  lease?: UpstreamLease;
  /** Why no recipient can go this way (connection or MAIL FROM refused): every RCPT gets it. */
  refused?: Outcome;
  /** Recipients the destination accepted at RCPT. */
  readonly recipients: string[] = [];
  /** The destination's reply to DATA, as it gave it. */
  data?: string;
  /** How the session was lost during delivery, when it was. */
  lost?: string;
  /** The playbook on the destination's refusal of the session, MAIL FROM or DATA. */
  explanation?: Explanation;
  /** What the destination's provider profile concluded of the message (auth/profile.ts). */
  profile?: ProfileVerdict;
  /** The session failed mid-command or said 421: it must not carry another transaction. */
  #broken = false;
  /** MAIL FROM not sent yet: it is sent with the first recipient that can go this way. */
  #mailPending = false;

  private constructor(destination: Destination, owner: LegOwner) {
    this.destination = destination;
    this.#owner = owner;
  }

  /** Takes a session for the destination (an idle one, or a new one); MAIL FROM goes with the first recipient. */
  static async open(destination: Destination, owner: LegOwner): Promise<Leg> {
    const leg = new Leg(destination, owner);
    await leg.#take();
    return leg;
  }

  async #take(): Promise<void> {
    const owner = this.#owner;
    const lease = await owner.ctx.upstreams.open(this.destination, owner.egress, { delivery: owner.ctx.config.delivery, playbook: owner.ctx.playbook });
    if ('kind' in lease) {
      this.refused = lease;
      this.explanation = explain(lease, owner.ctx.playbook);
      return;
    }
    this.lease = lease;
    const { connected } = lease;
    if (connected.wouldFail) {
      owner.ctx.logger.warn(
        { id: owner.id, destination: this.destination.label, mxHost: connected.mxHost, mtaSts: this.destination.tls.mtaSts, wouldFail: connected.wouldFail },
        'MTA-STS testing: delivering, but the policy in enforce mode would not allow it',
      );
    }
    // One round trip for MAIL FROM and the first recipient where PIPELINING is offered.
    this.#mailPending = true;
  }

  get connected() {
    return this.lease?.connected;
  }

  /** `mx host [ip]` once connected, else the destination's first host name. */
  get who(): string {
    const connected = this.connected;
    return connected ? `${connected.mxHost} [${connected.mxIp}]` : this.destination.hops[0].name;
  }

  /**
   * RCPT TO for one recipient: the client's outcome, and the destination's own reply when it
   * gave one; or why the session cannot take it.
   */
  async rcpt(address: string): Promise<{ outcome: Outcome; said?: string }> {
    if (this.refused || !this.lease) return { outcome: this.refused! };
    // RFC 6531 §3.4: a non-ASCII mailbox needs SMTPUTF8 all the way.
    if (/[^\x00-\x7f]/.test(address) && !this.lease.connected.session.extensions.has('SMTPUTF8')) {
      return { outcome: failure('permanent', 553, '5.6.7', `${this.who} does not support SMTPUTF8, needed for <${address}>`) };
    }
    const opening = this.#mailPending;
    try {
      let reply: Reply;
      if (this.#mailPending) {
        this.#mailPending = false;
        const { mail, rcpt } = await this.lease.mailAndRcpt(this.#owner.sender, this.#mailParams(), address);
        const accepted = this.#said(mail, 'MAIL FROM');
        if (accepted.kind !== 'accepted' || !rcpt) {
          this.refused = accepted;
          this.explanation = explain(accepted, this.#owner.ctx.playbook);
          return { outcome: accepted };
        }
        reply = rcpt;
      } else {
        reply = await this.lease.rcptTo(address);
      }
      const outcome = this.#said(reply, 'RCPT TO');
      if (outcome.kind === 'accepted') this.recipients.push(address);
      return { outcome, said: formatReply(reply) };
    } catch (err) {
      // A reused session is taken without a probe (pool.ts): one the destination closed while
      // it was idle is lost at its first command, before anything of this transaction was
      // accepted, so the transaction goes on over a fresh session instead. (A timeout or a
      // protocol error is the destination's answer, not a stale session's.)
      if (opening && this.lease.reused && err instanceof UpstreamError && err.kind === 'lost') {
        await this.lease.finish(false);
        this.lease = undefined;
        await this.#take();
        return this.rcpt(address);
      }
      this.#broken = true;
      this.refused = failure('temporary', 451, '4.4.2', `${this.who}: connection lost (${(err as Error).message})`);
      return { outcome: this.refused };
    }
  }

  /**
   * Sends the message for `pending` (the recipients the memo does not already account for);
   * one result per recipient. Results decided by the DATA reply carry it as `data`.
   */
  async send(pending: string[], message: () => MessageSource): Promise<RecipientResult[]> {
    const who = this.who;
    // The session was lost after some recipients were accepted: they wait for the client's retry.
    if (this.refused || !this.lease) return pending.map((address) => ({ address, outcome: this.refused!, remoteMta: who }));
    const lease = this.lease;
    const results: RecipientResult[] = [];
    let recipients = pending;
    try {
      // Some recipients of this destination already have the message: start over with the rest.
      if (pending.length < this.recipients.length) {
        await lease.rset();
        const mail = this.#said(await lease.mailFrom(this.#owner.sender, this.#mailParams()), 'MAIL FROM');
        if (mail.kind !== 'accepted') {
          this.explanation = explain(mail, this.#owner.ctx.playbook);
          return pending.map((address) => ({ address, outcome: mail, remoteMta: who }));
        }
        recipients = [];
        for (const address of pending) {
          const outcome = this.#said(await lease.rcptTo(address), 'RCPT TO');
          if (outcome.kind === 'accepted') recipients.push(address);
          else results.push({ address, outcome, remoteMta: who });
        }
        if (recipients.length === 0) return results;
      }
      const reply = await lease.data(message());
      const data = (this.data = formatReply(reply));
      const outcome = this.#said(reply, 'DATA');
      this.explanation = explain(outcome, this.#owner.ctx.playbook);
      for (const address of recipients) results.push({ address, outcome, remoteMta: who, data });
    } catch (err) {
      this.#broken = true;
      const lost = `${who}: connection lost during delivery (${err instanceof UpstreamError ? err.kind : 'error'}: ${(err as Error).message})`;
      const outcome = failure('temporary', 451, '4.4.2', lost);
      // No reply came: the record says what happened instead of naming one (`lost`).
      this.lost = lost;
      // Whoever has no result yet (the session may have died in the middle of the RCPTs) is deferred.
      for (const address of pending) if (!results.some((r) => r.address === address)) results.push({ address, outcome, remoteMta: who });
    }
    return results;
  }

  /**
   * The prediction judged against the profile of the destination's provider (by its MX hosts;
   * `default` for anyone else, and behind a route), its bulk rules for bulk mail.
   */
  judge(message: { prediction: Prediction; mode: Policy['mode']; keys: number; bulk: boolean; author: string; unsubscribe: Unsubscribe; egress: Egress }): void {
    const { providers } = this.#owner.ctx.playbook;
    const { name, profile } = providers.profileOf(providers.of(this.destination.hops.map((hop) => hop.name)));
    const { egress } = message;
    this.profile = judgeDestination({
      requires: profile,
      profile: name,
      bulk: message.bulk,
      mode: message.mode,
      sending: { ...message, egressIp: egress.ip, egress, tls: Boolean(this.connected?.session.tls) },
    });
  }

  /** Done with the session: back to the pool when it ended cleanly; safe to call more than once. */
  async finish(): Promise<void> {
    await this.lease?.finish(!this.#broken);
  }

  #mailParams(): Record<string, string> {
    const params: Record<string, string> = {};
    const offered = this.lease!.connected.session.extensions;
    const wanted = this.#owner.params;
    if (wanted.size && offered.has('SIZE')) params.SIZE = String(wanted.size);
    if (wanted.body && offered.has('8BITMIME')) params.BODY = wanted.body;
    if (wanted.smtputf8 && offered.has('SMTPUTF8')) params.SMTPUTF8 = '';
    // connectDestination made sure the session offers it (RFC 8689 §4.2.1).
    if (this.destination.tls.requireTls) params.REQUIRETLS = '';
    return params;
  }

  /** Prefixes a destination's reply so the admin can tell who said it and find the log record. */
  #relayed(reply: Reply): Reply {
    return { code: reply.code, enhanced: reply.enhanced ?? `${Math.floor(reply.code / 100)}.0.0`, lines: [`${this.who} said: ${clip(reply.lines.join(' '))} (relay id ${this.#owner.id})`] };
  }

  /**
   * A destination's reply as the client's outcome. Only 2xx accepts: any other reply below
   * 400 is out of protocol and must not count as delivery. A 421 ends only our session with
   * that destination (RFC 5321 §3.8), so the client hears 451: smtp-server would close the
   * client's own connection on a 421.
   */
  #said(reply: Reply, command: string): Outcome {
    if (reply.code >= 200 && reply.code < 300) return { kind: 'accepted', reply: this.#relayed(reply) };
    if (reply.code < 400 || reply.code > 599) {
      return failure('temporary', 451, '4.5.0', `${this.who} answered ${command} with "${clip(formatReply(reply))}", which is not a valid reply there`);
    }
    // RFC 5321 §3.8: after 421 the server is closing; that session carries nothing more.
    if (reply.code === 421) this.#broken = true;
    // The reply as given (a 421 still 421, the text unclipped) stays with the outcome for the playbook.
    const said = { reply, mxHost: this.connected?.mxHost ?? this.destination.hops[0].name };
    return outcomeOf(this.#relayed(reply.code === 421 ? { ...reply, code: 451 } : reply), `${command} refused: ${formatReply(reply)}`, said);
  }
}
