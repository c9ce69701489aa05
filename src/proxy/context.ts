import type { ConnectionOptions } from 'node:tls';
import type { KeyRing } from '../auth/index.ts';
import type { Config } from '../config/index.ts';
import type { MtaSts, Playbook, Shaper, UpstreamPool } from '../delivery/index.ts';
import type { Resolve } from '../dns/index.ts';
import type { Logger } from '../observability/index.ts';
import type { DeliveryMemo } from './memo.ts';

/** What a transaction needs from the running relay. */
export interface RelayContext {
  config: Config;
  resolve: Resolve;
  /** Asks DNS past both cache levels (and keeps the answer): what a 5xx policy refusal must rest on. */
  freshResolve: Resolve;
  memo: DeliveryMemo;
  /** DKIM keys; a transaction keeps the ones it started with across a reload. */
  keys: KeyRing;
  logger: Logger;
  /** The reply playbook with its provider registry: read at start and on SIGHUP, kept by a transaction that started with it. */
  playbook: Playbook;
  /** Extra TLS options for upstream STARTTLS (tests trust their CA through this). */
  upstreamTls?: ConnectionOptions;
  /** Upstream sessions, kept between transactions, and the per-provider limits on them. */
  upstreams: UpstreamPool;
  shaper: Shaper;
  /** MTA-STS policies of recipient domains, cached across transactions. */
  mtaSts?: MtaSts;
}

export interface ClientInfo {
  address: string;
  helo: string;
  user?: string;
  secure: boolean;
  /** The sender domains this client may use, in MAIL FROM and in From; undefined: any. */
  senderDomains?: string[];
}

/** ESMTP parameters of the client's MAIL FROM that the destination should see too. */
export interface MailParams {
  size?: number;
  body?: string;
  smtputf8?: boolean;
  /** RFC 8689 REQUIRETLS: every hop must use verified TLS and take the requirement on. */
  requireTls?: boolean;
}
