import { readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import type { z } from 'zod';
import { relayConfigSchema, type Config } from './schema.ts';

export { profileSchema, providerSchema } from './schema.ts';

export type { Config, ListenerConfig, EgressConfig, RouteConfig, ClientUser, RedisSettings, Profile, Requirements } from './schema.ts';

/** A configuration that cannot be used; `message` is one line naming the key path and the problem. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

function keyPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const part of path) {
    out += typeof part === 'number' ? `[${part}]` : `${out ? '.' : ''}${String(part)}`;
  }
  return out || '(top level)';
}

function describe(issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') {
    return `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
  }
  return issue.message;
}

/** Validates a parsed document; every problem is reported, each as `path: what is wrong`. */
export function parseConfig(document: unknown, source = 'config'): Config {
  const result = relayConfigSchema.safeParse(document ?? {});
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => `${keyPath(issue.path)}: ${describe(issue)}`);
  throw new ConfigError(`${source}: ${problems.join('; ')}`);
}

export function loadConfig(file: string): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let document: unknown;
  try {
    document = parseYaml(text, { prettyErrors: false });
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}` : '';
    throw new ConfigError(`${file}: not valid YAML${where}: ${(err as Error).message.split('\n')[0]}`);
  }
  return parseConfig(document, file);
}
