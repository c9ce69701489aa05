export { KeyRing, DkimKeyError, keyAdvice, keyKind, publicKeyRecord, type KeyAdvice, type SigningKey, type DkimAlgorithm } from './dkim/keys.ts';
export { RelaxedBodyHash, signHeaders, SIGNED_HEADERS, type Signature } from './dkim/sign.ts';
export { checkPublished, parseTags, txtRecordValue, txtZoneLine, zoneFileLine, type PublishedKey } from './dkim/record.ts';
export { generateDkimKey } from './dkim/keygen.ts';
export { checkSender, checkSpf, evaluateSpf, judge, policyFor, predict, predictFromParts, spfAdvice, spfMechanism, type Check, type Policy, type PolicyVerdict, type Prediction, type SpfLookups, type SpfVerdict } from './preflight.ts';
export { isBulk, judgeDestination, oneClickGaps, unsubscribeOf, type ProfileVerdict, type Sending, type Unsubscribe } from './profile.ts';
export { startRsaSigner } from './dkim/rsa-signer.ts';
