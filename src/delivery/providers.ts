import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ConfigError, profileSchema, providerSchema, type Config, type Profile } from '../config/index.ts';

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
  /** The profile of destinations no provider claims, and of providers that have none. */
  readonly fallback: Profile;

  private constructor(entries: ProviderConfig[], fallback: Profile) {
    this.entries = entries;
    this.fallback = fallback;
  }

  /**
   * The shipped table with the config's changes: for a shipped name, the keys given replace
   * the shipped ones (an `mx` list replaces the list); a new name needs `mx`, and its limits
   * default as in the config reference.
   */
  static load(overrides: Config['delivery']['providers'] = {}): Providers {
    const { default: fallback, ...listed } = parseYaml(readFileSync(SHIPPED, 'utf8')) as Record<string, unknown>;
    let profile = z.strictObject({ requires: profileSchema }).parse(fallback).requires;
    const shipped = z.record(z.string(), providerSchema).parse(listed);
    const entries = new Map(Object.entries(shipped).map(([name, entry]) => [name, { name, ...entry }]));
    for (const [name, change] of Object.entries(overrides)) {
      const { requires, ...limits } = change;
      const defined = Object.fromEntries(Object.entries(limits).filter(([, value]) => value !== undefined));
      if (name === 'default') {
        if (Object.keys(defined).length) throw new ConfigError(`delivery.providers.default: the default profile takes only requires (it matches no MX and shapes nothing)`);
        profile = { ...profile, ...definedProfile(requires) };
        continue;
      }
      const base = entries.get(name);
      if (base) {
        entries.set(name, { ...base, ...defined, ...(requires && { requires: { ...(base.requires ?? profile), ...definedProfile(requires) } }) });
        continue;
      }
      if (!change.mx) throw new ConfigError(`delivery.providers.${name}: a provider that is not shipped (${[...entries.keys()].join(', ')}) needs mx`);
      // The config already read the durations: only the limits it left out take their defaults.
      entries.set(name, { name, ...providerSchema.parse({ mx: change.mx }), ...defined, ...(requires && { requires: { ...profile, ...definedProfile(requires) } }) });
    }
    return new Providers([...entries.values()], profile);
  }

  /** The profile a destination is judged by: its provider's, else the default one. */
  profileOf(provider: ProviderConfig | undefined): { name: string; profile: Profile } {
    return provider?.requires ? { name: provider.name, profile: provider.requires } : { name: provider?.name ?? 'default', profile: this.fallback };
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

/** The parts of a profile an override gives: `all` and `bulk`, each replacing as a whole. */
function definedProfile(requires: Partial<Profile> | undefined): Partial<Profile> {
  return Object.fromEntries(Object.entries(requires ?? {}).filter(([, value]) => value !== undefined));
}
