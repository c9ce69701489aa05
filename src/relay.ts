import type { ConnectionOptions } from 'node:tls';
import { KeyRing } from './auth/index.ts';
import type { Config } from './config/index.ts';
import { MtaSts } from './delivery/index.ts';
import { createResolver } from './dns/index.ts';
import { EgressPool } from './identity/index.ts';
import { Inbound } from './inbound/index.ts';
import type { Logger } from './observability/index.ts';
import { createMemo, type RelayContext } from './proxy/index.ts';

export interface Relay {
  /** The SMTP ports actually bound, in listener order (port 0 in the config picks a free one). */
  ports: number[];
  egress: EgressPool;
  /**
   * Applies a new configuration to transactions that start from now on: DKIM keys, domains,
   * clients, routes, delivery settings. Throws (DkimKeyError) and changes nothing when a key
   * cannot be used. Returns the sections that only a restart applies.
   */
  reload(config: Config): string[];
  close(): Promise<void>;
}

// Read once at start (sockets, resolver, Redis connection, logger): a reload cannot change them.
const RESTART_ONLY = ['listeners', 'tls', 'egress', 'strict', 'identityRecheck', 'dns', 'memo', 'log'] as const;
const RESTART_ONLY_LIMITS = ['maxMessageSize', 'maxClients', 'clientTimeout'] as const;

function restartOnly(before: Config, after: Config): string[] {
  const changed: string[] = RESTART_ONLY.filter((key) => JSON.stringify(before[key]) !== JSON.stringify(after[key]));
  changed.push(...RESTART_ONLY_LIMITS.filter((key) => before.limits[key] !== after.limits[key]).map((key) => `limits.${key}`));
  if ((before.clients.users.length === 0) !== (after.clients.users.length === 0)) changed.push('clients.users (AUTH offered or not)');
  return changed;
}

function loadKeys(config: Config, logger: Logger): KeyRing {
  const keys = KeyRing.load(config.domains);
  for (const key of keys.keys) {
    logger.info({ domain: key.domain, selector: key.selector, algorithm: key.algorithm, bits: key.bits, standby: key.standby, source: key.source }, 'DKIM key loaded');
  }
  for (const warning of keys.warnings) logger.warn({ warning }, 'DKIM key warning');
  return keys;
}

/** For tests: what a deployment takes from the system (trusted CAs, the MTA-STS port 443). */
export interface RelayTestOptions {
  /** Extra TLS options for upstream STARTTLS; its `ca` is also what MTA-STS policy hosts must chain to. */
  upstreamTls?: ConnectionOptions;
  /** The port MTA-STS policies are fetched from instead of 443. */
  mtaStsPort?: number;
}

/** Wires the parts together from one validated config: the composition root of the relay. */
export async function startRelay(config: Config, logger: Logger, options: RelayTestOptions = {}): Promise<Relay> {
  const keys = loadKeys(config, logger);
  const resolve = createResolver(config.dns);
  const egress = new EgressPool(config, resolve, logger);
  await egress.start();
  const memo = createMemo(config.memo, logger);
  // Kept across reloads: cached policies stay valid whatever the configuration says.
  const mtaSts = new MtaSts({ resolve, ca: options.upstreamTls?.ca, port: options.mtaStsPort });
  let ctx: RelayContext = { config, resolve, memo, keys, logger, upstreamTls: options.upstreamTls, mtaSts };
  const inbound = new Inbound(ctx, egress);
  try {
    await inbound.listen();
  } catch (err) {
    egress.stop();
    await memo.close();
    throw err;
  }
  return {
    ports: inbound.listening.map((l) => l.port),
    egress,
    reload(next) {
      const nextKeys = loadKeys(next, logger);
      const pending = restartOnly(config, next);
      ctx = { ...ctx, config: next, keys: nextKeys };
      inbound.update(ctx);
      return pending;
    },
    async close() {
      await inbound.close();
      egress.stop();
      await memo.close();
    },
  };
}
