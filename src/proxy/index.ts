export { Transaction, senderDomainAllowed, type RelayContext, type ClientInfo, type MailParams } from './transaction.ts';
export { createMemo, type DeliveryMemo } from './memo.ts';
export { failure, toSmtpError, type Outcome } from './outcome.ts';
