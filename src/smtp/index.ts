// The shared ground of every folder: SMTP replies as servers send them (RFC 5321 §4.2, RFC 3463
// enhanced codes) and the outcome a client hears, with whether it should retry in its type.
export * from './reply.ts';
export * from './outcome.ts';
