import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';

// One of OWASP's equivalent scrypt settings (N=2^14, r=8, p=5): 16 MiB per check rather than
// 128 MiB, which matters when many clients authenticate at once. The parameters travel with
// the hash, so they can rise later.
const DEFAULTS = { N: 2 ** 14, r: 8, p: 5 };
const KEY_LENGTH = 32;

function derive(password: string, salt: Buffer, options: ScryptOptions, length: number): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scrypt(password.normalize('NFKC'), salt, length, { ...options, maxmem: 512 * 1024 * 1024 }, (err, key) => (err ? reject(err) : resolve(key))),
  );
}

/** `scrypt$N=131072,r=8,p=1$<salt base64>$<key base64>`, as printed by `hygiene-relay passwd`. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await derive(password, salt, DEFAULTS, KEY_LENGTH);
  return `scrypt$N=${DEFAULTS.N},r=${DEFAULTS.r},p=${DEFAULTS.p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

export function parseHash(hash: string): { options: ScryptOptions; salt: Buffer; key: Buffer } | undefined {
  const match = /^scrypt\$N=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(hash);
  if (!match) return undefined;
  return { options: { N: Number(match[1]), r: Number(match[2]), p: Number(match[3]) }, salt: Buffer.from(match[4], 'base64'), key: Buffer.from(match[5], 'base64') };
}

export async function verifyPassword(password: string, hash: string): Promise<boolean> {
  const parsed = parseHash(hash);
  if (!parsed) return false;
  const key = await derive(password, parsed.salt, parsed.options, parsed.key.length);
  return timingSafeEqual(key, parsed.key);
}
