import type { ConnectionOptions } from 'node:tls';
import type { Config } from './config/index.ts';
import { createResolver } from './dns/index.ts';
import { EgressPool } from './identity/index.ts';
import { Inbound } from './inbound/index.ts';
import type { Logger } from './observability/index.ts';
import { createMemo } from './proxy/index.ts';

export interface Relay {
  /** The SMTP ports actually bound, in listener order (port 0 in the config picks a free one). */
  ports: number[];
  egress: EgressPool;
  close(): Promise<void>;
}

/** Wires the parts together from one validated config: the composition root of the relay. */
export async function startRelay(config: Config, logger: Logger, options: { upstreamTls?: ConnectionOptions } = {}): Promise<Relay> {
  const resolve = createResolver(config.dns);
  const egress = new EgressPool(config, resolve, logger);
  await egress.start();
  const memo = createMemo(config.memo, logger);
  const inbound = new Inbound({ config, resolve, memo, logger, upstreamTls: options.upstreamTls }, egress);
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
    async close() {
      await inbound.close();
      egress.stop();
      await memo.close();
    },
  };
}
