import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ConfigError, providerSchema, type Config } from '../config/index.ts';

/** One provider of the registry, with its name (the key in providers.yaml). */
export type ProviderConfig = z.output<typeof providerSchema> & { name: string };

const SHIPPED = new URL('./providers.yaml', import.meta.url);

/**
 * The provider registry (DESIGN §5): the big receivers, recognised by their MX host names,
 * with the limits the relay keeps towards each. The table is data (providers.yaml beside this
 * file); `delivery.providers` in the config changes or adds entries by name. Shaping and the
 * reply playbook both use it, through the one matcher below.
 */
export class Providers {
  readonly entries: readonly ProviderConfig[];

  private constructor(entries: ProviderConfig[]) {
    this.entries = entries;
  }

  /**
   * The shipped table with the config's changes: for a shipped name, the keys given replace
   * the shipped ones (an `mx` list replaces the list); a new name needs `mx`, and its limits
   * default as in the config reference.
   */
  static load(overrides: Config['delivery']['providers'] = {}): Providers {
    const shipped = z.record(z.string(), providerSchema).parse(parseYaml(readFileSync(SHIPPED, 'utf8')));
    const entries = new Map(Object.entries(shipped).map(([name, entry]) => [name, { name, ...entry }]));
    for (const [name, change] of Object.entries(overrides)) {
      const base = entries.get(name);
      const defined = Object.fromEntries(Object.entries(change).filter(([, value]) => value !== undefined));
      if (base) {
        entries.set(name, { ...base, ...defined });
        continue;
      }
      if (!change.mx) throw new ConfigError(`delivery.providers.${name}: a provider that is not shipped (${[...entries.keys()].join(', ')}) needs mx`);
      // The config already read the durations: only the limits it left out take their defaults.
      entries.set(name, { name, ...providerSchema.parse({ mx: change.mx }), ...defined });
    }
    return new Providers([...entries.values()]);
  }

  has(name: string): boolean {
    return this.entries.some((entry) => entry.name === name);
  }

  /** The provider whose MX hosts these are, by host suffix (`aspmx.l.google.com` → gmail). */
  of(hosts: readonly string[]): ProviderConfig | undefined {
    for (const host of hosts) {
      const lower = host.toLowerCase().replace(/\.$/, '');
      const found = this.entries.find((entry) => entry.mx.some((suffix) => lower === suffix || lower.endsWith(`.${suffix}`)));
      if (found) return found;
    }
    return undefined;
  }
}
