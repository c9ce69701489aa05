export type { ClientInfo, MailParams, RelayContext } from './context.ts';
export { Transaction, senderDomainAllowed } from './transaction.ts';
export { createMemo, type DeliveryMemo } from './memo.ts';
