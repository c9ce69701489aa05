import type { ConnectionOptions } from 'node:tls';
import { KeyRing, startRsaSigner } from './auth/index.ts';
import type { Config } from './config/index.ts';
import type { HoldsControl } from './control/index.ts';
import { MtaSts, Playbook, Providers, ShapingState, SharedPolicyCache, UpstreamPool, type Shaper } from './delivery/index.ts';
import { createResolver, type CacheCount, type FlushCount } from './dns/index.ts';
import { runDoctor, type DoctorReport } from './doctor/index.ts';
import { EgressPool } from './identity/index.ts';
import { Inbound, type Drained, type InboundState } from './inbound/index.ts';
import { HttpServer, type Logger, type Readiness } from './observability/index.ts';
import { createMemo, sweepSpool, type RelayContext } from './proxy/index.ts';
import { connectShared, storesDown } from './redis/index.ts';

export interface Relay {
  /** The SMTP ports bound at start, in listener order (port 0 in the config picks a free one); one still retrying is absent. */
  ports: number[];
  /** The port of /metrics, /healthz and /readyz; undefined with `http: null`. */
  httpPort: number | undefined;
  /** What /readyz answers. */
  readiness(): Readiness;
  /** The drain's deadline, in milliseconds, as the running configuration says. */
  readonly shutdownTimeout: number;
  egress: EgressPool;
  /** DNS cache hits and misses per level and record type, for the metrics endpoint. */
  dnsCounts(): CacheCount[];
  /** `hygiene-relay doctor`'s checks of the running configuration and keys, on answers fresh from DNS. */
  doctor(): Promise<DoctorReport>;
  /** Drops every cached DNS answer (`hygiene-relay dns flush`, and each reload). */
  flushDns(): Promise<FlushCount>;
  /** The abuse guard's holds (`hygiene-relay abuse list | release`). */
  abuse: HoldsControl;
  /**
   * Applies a new configuration to transactions that start from now on: DKIM keys, domains,
   * clients, routes, delivery settings, the provider registry and the playbook (its overlay
   * file read again). Throws (DkimKeyError, ConfigError, PlaybookError) and changes nothing
   * when a key, a provider or a playbook row cannot be used. Returns the sections that only a restart applies.
   */
  reload(config: Config): string[];
  /**
   * Drains (SIGTERM): unready at once, no new connections, idle sessions ended now and the
   * others after their transaction, those still open at `shutdownTimeout` cut; then upstream
   * sessions, Redis and the HTTP port are closed.
   */
  close(): Promise<Drained>;
}

// Read once at start (sockets, resolver, Redis connection, logger): a reload cannot change them.
const RESTART_ONLY = ['listeners', 'tls', 'egress', 'strict', 'identityRecheck', 'dns', 'memo', 'log', 'control', 'http', 'workers'] as const;
const RESTART_ONLY_DELIVERY = ['redis'] as const;
const RESTART_ONLY_LIMITS = ['maxMessageSize', 'maxClients', 'clientTimeout', 'maxSessionTime', 'strangers', 'authFailures', 'redis'] as const;

function restartOnly(before: Config, after: Config): string[] {
  const changed: string[] = RESTART_ONLY.filter((key) => JSON.stringify(before[key]) !== JSON.stringify(after[key]));
  changed.push(...RESTART_ONLY_LIMITS.filter((key) => JSON.stringify(before.limits[key]) !== JSON.stringify(after.limits[key])).map((key) => `limits.${key}`));
  changed.push(...RESTART_ONLY_DELIVERY.filter((key) => JSON.stringify(before.delivery[key]) !== JSON.stringify(after.delivery[key])).map((key) => `delivery.${key}`));
  if ((before.clients.users.length === 0) !== (after.clients.users.length === 0)) changed.push('clients.users (AUTH offered or not)');
  return changed;
}

function loadKeys(config: Config, logger: Logger): KeyRing {
  const keys = KeyRing.load(config.domains);
  for (const key of keys.keys) {
    logger.info({ domain: key.domain, selector: key.selector, algorithm: key.algorithm, bits: key.bits, standby: key.standby, source: key.source }, 'DKIM key loaded');
  }
  for (const warning of keys.warnings) logger.warn({ warning }, 'DKIM key warning');
  if (keys.keys.some((key) => key.algorithm === 'rsa-sha256')) startRsaSigner();
  return keys;
}

/**
 * The provider registry with the config's changes, and the reply playbook with the admin's
 * rows over the shipped ones; throws (ConfigError, PlaybookError) when either cannot be used.
 */
function loadPlaybook(config: Config): Playbook {
  return Playbook.load(Providers.load(config.delivery.providers), config.delivery.playbook);
}

/**
 * What reload() would refuse (a key, a provider or a playbook row that cannot be used),
 * thrown without changing anything: a supervisor checks a file so before its workers load it.
 */
export function checkReload(config: Config): void {
  KeyRing.load(config.domains);
  loadPlaybook(config);
}

/**
 * Where the limits keep what Redis does not hold: connection slots always, AUTH failure
 * counts without `limits.redis`, shaping without `delivery.redis`. By default this process;
 * a worker passes its supervisor's (src/supervisor/), so N workers limit as one relay does.
 */
export interface LocalState extends InboundState {
  shaper(): Shaper;
}

export interface RelayOptions {
  /** Extra TLS options for upstream STARTTLS; its `ca` is also what MTA-STS policy hosts must chain to (tests). */
  upstreamTls?: ConnectionOptions;
  /** The port MTA-STS policies are fetched from instead of 443 (tests). */
  mtaStsPort?: number;
  local?: LocalState;
}

/** Wires the parts together from one validated config: the composition root of the relay. */
export async function startRelay(config: Config, logger: Logger, options: RelayOptions = {}): Promise<Relay> {
  const keys = loadKeys(config, logger);
  const playbook = loadPlaybook(config);
  const resolver = createResolver(config.dns, logger);
  const resolve = resolver.resolve;
  const egress = new EgressPool(config, resolve, logger);
  const memo = createMemo(config.memo, logger);
  const shared = config.delivery.redis ? connectShared(config.delivery.redis, { timeout: 250, what: 'delivery state (shaping, MTA-STS policies)', logger }) : undefined;
  const shaper = shared || !options.local ? new ShapingState({ shared, logger }) : options.local.shaper();
  const upstreams = new UpstreamPool({ shaper, resolve, tls: options.upstreamTls });
  // Kept across reloads: cached policies stay valid whatever the configuration says.
  const mtaSts = new MtaSts({ resolve, ca: options.upstreamTls?.ca, port: options.mtaStsPort, cache: shared && new SharedPolicyCache(shared) });
  let ctx: RelayContext = { config, resolve, freshResolve: resolver.fresh, memo, keys, logger, playbook, upstreamTls: options.upstreamTls, upstreams, shaper, mtaSts };
  const inbound = new Inbound(ctx, egress, options.local);
  let started = false;
  const readiness = (): Readiness => {
    const problems = [...inbound.unbound];
    if (!started) problems.push('starting');
    if (inbound.draining) problems.push('draining: finishing the transactions in flight before exit');
    if (started && !egress.select()) problems.push('no usable egress identity (strict, or IPv6 only): MAIL FROM is answered 451 4.3.5');
    return { problems, degraded: storesDown().map((what) => `${what}: Redis unavailable, carrying on without it`) };
  };
  let http: HttpServer | undefined;
  const stop = async () => {
    await http?.close();
    egress.stop();
    await upstreams.close();
    await memo.close();
    resolver.close();
    shaper.close();
    shared?.close();
  };
  try {
    // First: /readyz answers (unready) while the rest starts and while a listener waits for its address.
    if (config.http) http = await HttpServer.listen(config.http, { readiness }, logger);
    await Promise.all([resolver.ready(), memo.ready(), shared?.ready, inbound.ready()]);
    await egress.start();
    await sweepSpool(config.delivery.spool.dir, logger);
    await inbound.listen();
    started = true;
  } catch (err) {
    // Nothing may stay behind (Redis reconnecting, timers, a listener retrying) when start-up fails.
    await inbound.drain(0);
    await stop();
    throw err;
  }
  return {
    ports: inbound.listening.map((l) => l.port),
    httpPort: http?.port,
    readiness,
    get shutdownTimeout() {
      return ctx.config.shutdownTimeout;
    },
    egress,
    dnsCounts: () => resolver.counts(),
    flushDns: () => resolver.flush(),
    abuse: inbound.abuse,
    doctor: () => runDoctor(ctx.config, resolver.fresh, ctx.keys),
    reload(next) {
      const nextKeys = loadKeys(next, logger);
      const nextPlaybook = loadPlaybook(next);
      const pending = restartOnly(config, next);
      ctx = { ...ctx, config: next, keys: nextKeys, playbook: nextPlaybook };
      inbound.update(ctx);
      // An admin reloads after fixing a record: no answer cached before it may outlive the reload.
      void resolver.flush();
      return pending;
    },
    async close() {
      const drained = await inbound.drain(ctx.config.shutdownTimeout);
      await stop();
      return drained;
    },
  };
}
