export type { ClientInfo, MailParams, RelayContext } from './context.ts';
export { Transaction } from './transaction.ts';
export { senderDomainAllowed } from './hygiene.ts';
export { createMemo, DEFAULT_MEMO_PATH, type DeliveryMemo } from './memo.ts';
export { sweepSpool } from './spool.ts';
export { RefusalLog, type PolicyReason } from './record.ts';
