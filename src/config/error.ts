/** A configuration that cannot be used; `message` is one line naming the key path and the problem. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}
