import { parseConfig } from '../../src/config/index.ts';
import { createResolver, type Resolver } from '../../src/dns/index.ts';
import { createLogger } from '../../src/observability/index.ts';
import type { DnsServer } from './dns-server.ts';
import { LogCapture } from './world.ts';

/** A resolver as the relay builds it from its `dns` section, against `server`. */
export async function resolverFor(server: DnsServer, cache: Record<string, unknown> = {}, logs = new LogCapture()): Promise<Resolver> {
  const config = parseConfig({ egress: [{ ip: '127.0.0.2' }], dns: { servers: [server.address], timeout: '300ms', tries: 1, cache } });
  const resolver = createResolver(config.dns, createLogger('info', logs));
  await resolver.ready();
  return resolver;
}

/** The shared level is written behind the answer: wait until Redis holds it. */
export async function untilWritten(exists: () => Promise<number>): Promise<void> {
  while ((await exists()) === 0) await new Promise((resolve) => setImmediate(resolve));
}
