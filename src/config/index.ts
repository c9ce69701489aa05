import { readFileSync } from 'node:fs';
import { LineCounter, parse as parseYaml, YAMLParseError } from 'yaml';
import type { z } from 'zod';
import { ConfigError } from './error.ts';
import { relayConfigSchema, type Config } from './schema.ts';

export { ConfigError } from './error.ts';
export { exposedKeyWarning, readKeyFile, readTlsFiles, type TlsFiles } from './key-files.ts';
export { profileSchema, providerSchema } from './schema.ts';

export type { AbuseConfig, Config, ListenerConfig, EgressConfig, RouteConfig, ClientUser, RedisSettings, Profile, Requirements } from './schema.ts';

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
  // `file:line:column:` is what editors and grep users jump to.
  const lines = new LineCounter();
  try {
    document = parseYaml(text, { prettyErrors: false, lineCounter: lines });
  } catch (err) {
    let where = '';
    if (err instanceof YAMLParseError) {
      const { line, col } = lines.linePos(err.pos[0]);
      where = `:${line}:${col}`;
    }
    throw new ConfigError(`${file}${where}: not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  return parseConfig(document, file);
}
