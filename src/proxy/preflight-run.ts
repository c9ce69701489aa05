import { checkSpf, judge, predict, predictFromParts, unsubscribeOf, type Policy, type Prediction, type SigningKey, type SpfVerdict } from '../auth/index.ts';
import type { Resolve } from '../dns/index.ts';
import { verifyEgress, type Egress } from '../identity/index.ts';
import type { HeaderSection } from '../message/index.ts';
import { Counter, Histogram, METRIC_PREFIX, SECONDS_BUCKETS } from '../observability/index.ts';
import { failure, type Outcome } from '../smtp/index.ts';
import type { RelayContext } from './context.ts';
import type { Leg } from './leg.ts';

const predictions = new Counter({
  name: `${METRIC_PREFIX}preflight_predictions_total`,
  help: "What the preflight predicted a receiver concludes of the signed message, by DMARC result, SPF result and DKIM result (the best of the relay's signatures)",
  labelNames: ['dmarc', 'spf', 'dkim'],
});
const preflightSeconds = new Histogram({
  name: `${METRIC_PREFIX}preflight_seconds`,
  help: 'Time the authentication preflight took, the fresh re-check before a refusal included',
  buckets: SECONDS_BUCKETS,
});

/** The best DKIM result among the signatures: pass when any passes (RFC 6376 §6.1 treats them one by one). */
function dkimResult(prediction: Prediction): string {
  const results = prediction.dkim.map((signature) => signature.result);
  return results.includes('pass') ? 'pass' : (results[0] ?? 'none');
}

/** Messages up to this size that carry signatures of their own get mailauth's full authenticate(). */
const FULL_PREFLIGHT_LIMIT = 2 * 1024 * 1024;

export interface PreflightInput {
  ctx: RelayContext;
  /** The author (From) domain's policy. */
  policy: Policy;
  /** The keys the relay signed with. */
  keys: SigningKey[];
  egress: Egress;
  sender: string;
  spfAtMailFrom?: SpfVerdict;
  size: number;
  header: HeaderSection;
  bulk: boolean;
  /** The message as it will leave, signed. */
  outgoing: () => AsyncIterable<Buffer>;
  /** The destinations with recipients: each gets its profile verdict. */
  legs: Leg[];
}

/**
 * The receiver's verdict predicted (mailauth, the relay's resolver), judged against the
 * per-domain floor (`require`) and against each destination's provider profile. A refusal
 * for good rests on answers fetched fresh from DNS, never on cached ones: when the cached
 * answers would refuse, the prediction is made again past the cache, so a record the admin
 * just fixed passes at once (and its new answer is cached for everyone).
 */
export async function runPreflight(input: PreflightInput): Promise<{ refusal?: Outcome; record: Record<string, unknown>; error?: Error }> {
  const end = preflightSeconds.startTimer();
  try {
    return await preflight(input);
  } finally {
    end();
  }
}

async function preflight(input: PreflightInput): Promise<{ refusal?: Outcome; record: Record<string, unknown>; error?: Error }> {
  const { ctx, policy, keys, egress, sender } = input;
  const predictWith = async (resolve: Resolve, fresh: boolean): Promise<Prediction> => {
    const at = { resolve, ip: egress.ip, helo: egress.helo };
    // The verdict is composed from what the relay already checked (SPF at MAIL FROM, its own
    // signatures, whose hashes are right by construction, against the published keys): a
    // second parse and body hash of the message would cost more than the rest of the relay.
    // Only signatures the message brought along need a full verification, and above the
    // limit not even those (the memory a parse would take).
    const others = input.header.count('dkim-signature');
    if (!input.spfAtMailFrom || (others > 0 && input.size <= FULL_PREFLIGHT_LIMIT)) return predict(input.outgoing(), sender, at);
    const spf = fresh ? await checkSpf(sender, at) : input.spfAtMailFrom;
    return predictFromParts({ spf, sender, author: policy.domain, keys, otherSignatures: others, resolve });
  };
  const judgeAll = (prediction: Prediction, identity: Egress) => {
    const facts = { prediction, mode: policy.mode, keys: keys.length, bulk: input.bulk, author: policy.domain, unsubscribe: unsubscribeOf(input.header), egress: identity };
    for (const leg of input.legs) leg.judge(facts);
    return judge(policy, prediction, { ip: egress.ip, keys: keys.length });
  };
  let prediction: Prediction;
  let verdict: ReturnType<typeof judge>;
  try {
    prediction = await predictWith(ctx.resolve, false);
    verdict = judgeAll(prediction, egress);
    const forGood = verdict.refusal?.kind === 'permanent' || input.legs.some((leg) => leg.profile?.outcome?.kind === 'permanent');
    // An unverified identity may be the whole reason a destination would refuse (or defer).
    const onIdentity = !egress.verified && input.legs.some((leg) => leg.profile?.outcome);
    if (policy.mode === 'enforce' && (forGood || onIdentity)) {
      prediction = await predictWith(ctx.freshResolve, true);
      // The identity was verified at start or at the last re-check: a refusal for good that
      // rests on its PTR checks it again now (a PTR the admin just fixed counts at once).
      const configured = ctx.config.egress.find((e) => e.ip === egress.ip);
      const identity = configured && !egress.verified ? await verifyEgress(configured, ctx.freshResolve) : egress;
      verdict = judgeAll(prediction, identity);
    }
  } catch (err) {
    return {
      refusal: failure('temporary', 451, '4.4.3', 'the authentication preflight could not complete; try again later'),
      record: { policy, error: (err as Error).message },
      error: err as Error,
    };
  }
  const { reasons, refusal } = verdict;
  predictions.inc({ dmarc: prediction.dmarc.result, spf: prediction.spf.result, dkim: dkimResult(prediction) });
  return {
    refusal,
    record: {
      policy,
      spfAtMailFrom: input.spfAtMailFrom,
      prediction,
      verdict: refusal ? (policy.mode === 'enforce' ? 'refused' : 'would be refused (monitor)') : 'pass',
      reasons: reasons.length ? reasons : undefined,
    },
  };
}
