import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import {
  checkSender,
  isBulk,
  policyFor,
  RelaxedBodyHash,
  type Policy,
  type Signature,
  type SigningKey,
  type SpfVerdict,
} from '../auth/index.ts';
import { resolveDestination, type Destination } from '../delivery/index.ts';
import type { Egress } from '../identity/index.ts';
import type { Logger } from '../observability/index.ts';
import { failure, type Outcome } from '../smtp/index.ts';
import type { ClientInfo, MailParams, RelayContext } from './context.ts';
import type { MemoKey } from './memo.ts';
import { BodyScan, HeaderSection, HeaderSplitter, headerMalformation } from '../message/index.ts';
import { authorDomain, receivedHeader } from './headers.ts';
import { applyHygiene, checkFrom, checkRules, malformedRefusal, rulesRefusal, sign } from './hygiene.ts';
import { Spool } from './spool.ts';
import { Leg } from './leg.ts';
import { runPreflight } from './preflight-run.ts';
import { countTransaction, explain, spamRefusals, transactionRecord, type MessageFacts, type RecipientRecord, type TransactionFacts } from './record.ts';
import { sendStatusNotification } from './status-notification.ts';
import { toReport, verdict, type Notification, type RecipientResult } from './verdict.ts';

/** The message once DATA is complete: where it is kept, its header section, its signatures. */
interface SpooledMessage {
  spool: Spool;
  /** The header section as it leaves, after hygiene. */
  header: HeaderSection;
  signatures: Buffer;
  /** Where the rest of the message (after the original header section) starts in the spool. */
  offset: number;
  /** Bulk mail, judged by the providers' bulk rules. */
  bulk: boolean;
  /** The author domain's policy, once the preflight has predicted the verdict and judged each destination. */
  mode?: Policy['mode'];
}


export function newTransactionId(): string {
  return randomBytes(9).toString('base64url');
}

/** RFC 5321 §2.4: local parts are case-sensitive, domains are not. */
function sameAddress(a: string, b: string): boolean {
  const at = (x: string) => x.lastIndexOf('@');
  return a.slice(0, at(a)) === b.slice(0, at(b)) && a.slice(at(a)).toLowerCase() === b.slice(at(b)).toLowerCase();
}

function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1).toLowerCase();
}

/**
 * One client transaction proxied to every destination at once (DESIGN §1). The client is
 * never told 250 while any recipient is neither accepted by its destination nor reported to
 * the sender in a status notification.
 */
export class Transaction {
  readonly id = newTransactionId();
  readonly #ctx: RelayContext;
  readonly #client: ClientInfo;
  readonly #sender: string;
  readonly #params: MailParams;
  readonly #egress: Egress;
  readonly #logger: Logger;
  readonly #legs = new Map<string, Leg>();
  readonly #routing = new Map<string, Promise<Destination | Outcome>>();
  readonly #recipients: RecipientRecord[] = [];
  readonly #started = Date.now();
  #finished = false;
  #delivering = false;
  /** The recipient whose RCPT TO is being answered. */
  #unanswered?: RecipientRecord;
  #outcome?: Outcome;
  #message?: MessageFacts;
  /** The client left in the middle of DATA. */
  #abandoned?: { kind: 'abandoned'; stage: string; reason: string };
  /** Set by close(): a session still being opened is closed as soon as it is. */
  #closed = false;
  #spf?: SpfVerdict;
  #added: string[] = [];
  #preflightRecord?: Record<string, unknown>;
  /** The relay's own rules the message breaks (hygiene.ts `checkRules`), and what became of it. */
  #rules?: TransactionFacts['rules'];

  /** Told the providers that refused recipients as spam once the transaction is over (the abuse guard's feedback). */
  readonly #feedback?: (providers: string[]) => Promise<void>;

  constructor(ctx: RelayContext, client: ClientInfo, sender: string, params: MailParams, egress: Egress, feedback?: (providers: string[]) => Promise<void>) {
    this.#ctx = ctx;
    this.#feedback = feedback;
    this.#client = client;
    this.#sender = sender;
    this.#params = params;
    this.#egress = egress;
    this.#logger = ctx.logger;
  }

  #own(outcome: Outcome): Outcome {
    if (outcome.reply.lines.join(' ').endsWith(`(relay id ${this.id})`)) return outcome;
    return { ...outcome, reply: { ...outcome.reply, lines: [`${outcome.reply.lines.join(' ')} (relay id ${this.id})`] } };
  }

  async #route(domain: string): Promise<Destination | Outcome> {
    let routing = this.#routing.get(domain);
    if (!routing) {
      routing = resolveDestination(domain, this.#ctx.config.delivery, this.#ctx.resolve, { mtaSts: this.#ctx.mtaSts, requireTls: this.#params.requireTls });
      this.#routing.set(domain, routing);
    }
    return routing;
  }

  /** RCPT: routes the recipient, opens its destination's session if needed, and forwards it. */
  async addRecipient(address: string): Promise<Outcome> {
    if (this.#recipients.some((r) => r.result === 'accepted' && sameAddress(r.address, address))) {
      // RFC 5321 §3.3: a repeated recipient is accepted once; forwarding it again could deliver twice.
      return { kind: 'accepted', reply: { code: 250, enhanced: '2.1.5', lines: [`<${address}> is already a recipient of this message`] } };
    }
    // Deferred until the destination says otherwise: a fault of the relay is answered 451.
    const record: RecipientRecord = { address, result: 'deferred' };
    this.#recipients.push(record);
    this.#unanswered = record;
    const outcome = await this.#forwardRecipient(address, record);
    Object.assign(record, explain(outcome, this.#ctx.playbook));
    record.result = outcome.kind === 'accepted' ? 'accepted' : outcome.kind === 'temporary' ? 'deferred' : 'refused';
    return outcome;
  }

  async #forwardRecipient(address: string, record: RecipientRecord): Promise<Outcome> {
    const destination = await this.#route(domainOf(address));
    if ('kind' in destination) return this.#own(destination);
    let leg = this.#legs.get(destination.key);
    if (!leg) {
      leg = await Leg.open(destination, { id: this.id, sender: this.#sender, params: this.#params, egress: this.#egress, ctx: this.#ctx });
      this.#legs.set(destination.key, leg);
      // The client left while this session was being opened: it goes back to the pool unused.
      if (this.#closed) {
        void leg.finish();
        return failure('temporary', 451, '4.3.0', 'the transaction ended while the destination was being reached');
      }
    }
    record.mx = leg.who;
    const { outcome, said } = await leg.rcpt(address);
    if (said) record.destination = { rcpt: said };
    return this.#own(outcome);
  }

  /** The reply to the last RCPT TO, as the client got it (undefined: none could be written). */
  answered(reply: string | undefined): void {
    if (this.#unanswered && reply !== undefined) this.#unanswered.client = reply;
    this.#unanswered = undefined;
  }

  /**
   * DATA: spools the message, then sends it to every destination in parallel and answers
   * with one reply by the rules of DESIGN §1.
   */
  async deliver(stream: Readable & { sizeExceeded?: boolean }): Promise<Outcome> {
    const config = this.#ctx.config;
    const spool = new Spool(config.delivery.spool.memoryLimit, config.delivery.spool.dir);
    const dataStarted = Date.now();
    this.#delivering = true;
    let outcome: Outcome = failure('temporary', 451, '4.3.0', 'message not delivered');
    let messageId: string | undefined;
    let dkim: Signature[] | string | undefined;
    const bodyHash = new RelaxedBodyHash();
    const bodyScan = new BodyScan();
    const splitter = new HeaderSplitter((chunk) => {
      bodyHash.update(chunk);
      bodyScan.push(chunk);
    });
    try {
      for await (const chunk of stream) {
        // Past the size limit the rest is only drained: it will be refused anyway.
        if (stream.sizeExceeded) continue;
        await spool.write(chunk as Buffer);
        splitter.push(chunk as Buffer);
      }
      await spool.end();
      if (stream.sizeExceeded) {
        outcome = failure('permanent', 552, '5.3.4', `message exceeds the size limit of ${config.limits.maxMessageSize} bytes`);
        return outcome;
      }
      if (splitter.overflow) {
        outcome = failure('permanent', 552, '5.3.4', 'header section larger than 1 MiB');
        return outcome;
      }
      // Parsed once: the checks, hygiene, the record and the signer all read these fields.
      const original = HeaderSection.parse(splitter.header);
      messageId = original.value('message-id');
      // Before anything reads the fields' values: a malformed message goes nowhere, and the
      // reply names what is wrong without echoing it.
      const malformed = headerMalformation(original, this.#params.smtputf8 === true) ?? bodyScan.malformation;
      if (malformed) {
        outcome = this.#own(malformedRefusal(malformed));
        return outcome;
      }
      const checked = checkFrom(original, this.#client);
      if ('refused' in checked) {
        outcome = this.#own(checked.refused);
        return outcome;
      }
      const { header, added } = applyHygiene(original, { removeReceived: config.hygiene.removeReceived, sha256: spool.sha256, sender: this.#sender, helo: this.#egress.helo });
      this.#added = added;
      // The record names the Message-ID that left, the one the relay added included.
      messageId = header.value('message-id');
      const signed = await sign(header, bodyHash.digest(), this.#ctx.keys);
      dkim = signed.record;
      const bulk = isBulk(header, config, { author: checked.from, sender: this.#sender });
      const author = authorDomain(header)!;
      const breaches = checkRules({ header, author, keys: signed.keys.length, bulk, consumerDomains: config.hygiene.consumerDomains });
      if (breaches.length) {
        // The author domain's policy decides, as it does for the preflight: monitor relays and records.
        const enforce = policyFor(config, author).mode === 'enforce';
        this.#rules = { verdict: enforce ? 'refused' : 'would refuse (monitor)', breaches };
        if (enforce) {
          outcome = this.#own(rulesRefusal(breaches));
          return outcome;
        }
      }
      const message: SpooledMessage = { spool, header, offset: original.bytes.length, signatures: signed.header, bulk };
      const stopped = await this.#preflight(message, signed.keys);
      if (stopped) {
        outcome = this.#own(stopped);
        return outcome;
      }
      outcome = this.#own(await this.#deliverSpooled(message));
      return outcome;
    } catch (err) {
      // The rest is drained before the answer: smtp-server writes it once the stream ended.
      stream.resume();
      await finished(stream).catch(() => undefined);
      // smtp-server destroys the message stream when the client leaves in the middle of it.
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ECONNECTION' || code === 'ERR_STREAM_PREMATURE_CLOSE') {
        this.#abandoned = { kind: 'abandoned', stage: 'during DATA', reason: 'the client closed the connection before the end of the message' };
      } else {
        this.#logger.error({ err, id: this.id }, 'transaction failed while spooling');
      }
      outcome = this.#own(failure('temporary', 451, '4.3.0', `local error while receiving the message (${(err as Error).message})`));
      return outcome;
    } finally {
      await spool.dispose();
      // The QUITs need not delay the client's answer.
      void this.close();
      this.#outcome = outcome;
      this.#message = { size: spool.size, messageId, dkim, sha256: spool.sha256, spooledToDisk: spool.onDisk, dataMs: Date.now() - dataStarted };
    }
  }

  /** The reply to DATA went out (or could not: undefined): the record is written with it. */
  finish(reply: string | undefined): void {
    if (this.#abandoned) return this.#log(this.#abandoned);
    this.#log(this.#outcome ?? failure('temporary', 451, '4.3.0', 'message not delivered'), reply);
  }

  /** SPF at MAIL FROM, once checked. */
  get spf(): SpfVerdict | undefined {
    return this.#spf;
  }

  /** SPF at MAIL FROM (auth/preflight.ts): refused here when the sender domain's policy enforces SPF. */
  async checkSender(): Promise<Outcome> {
    const ctx = { resolve: this.#ctx.resolve, ip: this.#egress.ip, helo: this.#egress.helo };
    let { spf, outcome } = await checkSender(this.#sender, this.#ctx.config, ctx);
    // A refusal for good rests on answers fetched fresh from DNS (see #preflight).
    if (outcome.kind === 'permanent') ({ spf, outcome } = await checkSender(this.#sender, this.#ctx.config, { ...ctx, resolve: this.#ctx.freshResolve }));
    this.#spf = spf;
    return outcome;
  }

  /**
   * The receiver's verdict on the message as it will leave (signed, from this egress), and
   * what the author domain's policy makes of it (preflight-run.ts): enforce stops a failure
   * here with a reply that names the record to fix; monitor lets it go and the record says
   * what would happen. Each destination's profile verdict is left on its leg.
   */
  async #preflight(message: SpooledMessage, keys: SigningKey[]): Promise<Outcome | undefined> {
    const policy = policyFor(this.#ctx.config, authorDomain(message.header)!);
    const judged = await runPreflight({
      ctx: this.#ctx,
      policy,
      keys,
      egress: this.#egress,
      sender: this.#sender,
      spfAtMailFrom: this.#spf,
      size: message.spool.size,
      header: message.header,
      bulk: message.bulk,
      outgoing: () => this.#outgoing(Buffer.alloc(0), message, false),
      legs: [...this.#legs.values()].filter((leg) => leg.recipients.length),
    });
    this.#preflightRecord = judged.record;
    if (judged.error) this.#logger.warn({ err: judged.error, id: this.id }, 'preflight authentication failed');
    else message.mode = policy.mode;
    return policy.mode === 'enforce' ? judged.refusal : undefined;
  }

  async #deliverSpooled(message: SpooledMessage): Promise<Outcome> {
    const { spool } = message;
    const legs = [...this.#legs.values()].filter((leg) => leg.recipients.length);
    const keys = (leg: Leg): MemoKey[] => leg.recipients.map((recipient) => ({ message: spool.sha256, sender: this.#sender, recipient }));
    const { memo } = this.#ctx;
    const memoStates = await Promise.all(legs.map((leg) => memo.lookup(keys(leg))));
    const received = receivedHeader({ client: this.#client, by: this.#egress.helo, id: this.id, recipients: legs.flatMap((l) => l.recipients) });

    const results = await Promise.all(
      legs.map(async (leg, i) => {
        const pending = leg.recipients.filter((_, j) => memoStates[i][j] === undefined);
        leg.recipients.forEach((address, j) => {
          const state = memoStates[i][j];
          if (state) this.#record(address).result = state === 'delivered' ? 'already-delivered' : 'already-bounced';
        });
        if (pending.length === 0) return [];
        // Under enforce, a destination whose provider would refuse the message does not get it.
        const refusal = message.mode === 'enforce' ? leg.profile?.outcome : undefined;
        const results: RecipientResult[] = refusal
          ? pending.map((address) => ({ address, outcome: this.#own(refusal), remoteMta: this.#egress.helo }))
          : await leg.send(pending, () => this.#outgoing(received, message, true));
        for (const r of results) {
          const record = this.#record(r.address);
          if (r.data !== undefined) record.destination = { ...record.destination, data: r.data };
          Object.assign(record, explain(r.outcome, this.#ctx.playbook));
        }
        return results;
      }),
    );
    const fresh = results.flat();
    // Every recipient a destination accepted has either a result or a memo state: a gap would be a 250 for mail nobody has.
    legs.forEach((leg, i) =>
      leg.recipients.forEach((address, j) => {
        if (!memoStates[i][j] && !fresh.some((r) => r.address === address)) {
          fresh.push({ address, outcome: failure('temporary', 451, '4.3.0', `no result from ${leg.who}`), remoteMta: leg.who });
        }
      }),
    );
    const remembered = memoStates.flat().filter(Boolean).length;
    const refusals = toReport(fresh, remembered, this.#sender);
    let notification: Notification = 'none';
    if (refusals.length) {
      const sent = await sendStatusNotification(this.#ctx, this.#egress, { id: this.id, sender: this.#sender, refusals, header: message.header, arrival: new Date(this.#started) });
      notification = sent ? 'sent' : 'failed';
    }
    const { outcome, fates, remember } = verdict(fresh, remembered, this.#sender, notification);
    for (const { address, fate } of fates) this.#record(address).result = fate;
    await memo.record(remember.map(({ address, state }) => ({ key: { message: spool.sha256, sender: this.#sender, recipient: address }, state })));
    return outcome;
  }

  /**
   * The message as it leaves: RFC 5321 §4.4 our Received on top, the DKIM signatures, the
   * header section after hygiene, then the rest as the client sent it.
   */
  async *#outgoing(received: Buffer, message: SpooledMessage, reuse: boolean): AsyncGenerator<Buffer> {
    yield Buffer.concat([received, message.signatures, message.header.bytes]);
    yield* message.spool.chunks(message.offset, { reuse });
  }

  #record(address: string): RecipientRecord {
    return this.#recipients.findLast((r) => r.address === address && r.result !== 'refused' && r.result !== 'deferred') ?? this.#recipients.findLast((r) => r.address === address)!;
  }

  /** Done with every upstream session: back to the pool when it ended cleanly; safe to call more than once. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#legs.values()].map((leg) => leg.finish()));
  }

  /**
   * The client left or started over before the end of DATA: the record says so, at which
   * stage, and names no reply (none was given). Once DATA is complete the delivery finishes on
   * its own (the memo covers a client that left) and `finish` writes the record.
   */
  async abort(reason: string): Promise<void> {
    if (this.#delivering) return;
    await this.close();
    this.#log({ kind: 'abandoned', stage: this.#recipients.length ? 'after RCPT TO' : 'after MAIL FROM', reason });
  }

  /** Refused at MAIL FROM: nothing to record here (the refusal is a record of its own). */
  async discard(): Promise<void> {
    this.#finished = true;
    await this.close();
  }

  #log(outcome: TransactionFacts['outcome'], reply?: string): void {
    if (this.#finished) return;
    this.#finished = true;
    const facts: TransactionFacts = {
      id: this.id,
      client: this.#client,
      sender: this.#sender,
      recipients: this.#recipients,
      egress: this.#egress,
      spf: this.#spf,
      preflight: this.#preflightRecord,
      rules: this.#rules,
      addedHeaders: this.#added,
      legs: [...this.#legs.values()],
      message: this.#message ?? {},
      outcome,
      reply,
      playbook: this.#ctx.playbook,
      started: this.#started,
    };
    const record = transactionRecord(facts);
    this.#logger.info(record, 'transaction');
    countTransaction(facts, record);
    const refusals = spamRefusals(facts, record);
    if (refusals.length && this.#feedback) this.#feedback(refusals).catch((err: unknown) => this.#logger.error({ err, relayId: this.id }, 'abuse guard: the destinations\' refusals as spam could not be counted'));
  }
}
