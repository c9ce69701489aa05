export { KeyRing, DkimKeyError, publicKeyRecord, type SigningKey, type DkimAlgorithm } from './dkim/keys.ts';
export { RelaxedBodyHash, signHeaders, SIGNED_HEADERS, type Signature } from './dkim/sign.ts';
export { checkPublished, txtRecordValue, zoneFileLine, type PublishedKey } from './dkim/record.ts';
export { generateDkimKey } from './dkim/keygen.ts';
export { checkSender, checkSpf, judge, policyFor, predict, predictFromParts, spfAdvice, type Check, type Policy, type PolicyVerdict, type Prediction, type SpfVerdict } from './preflight.ts';
export { isBulk, judgeDestination, unsubscribeOf, type ProfileVerdict, type Sending, type Unsubscribe } from './profile.ts';
