import { createHash, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import type { Config, ClientUser } from '../config/index.ts';
import { verifyPassword } from './passwords.ts';

/** Clients as smtp-server may report them: IPv4 peers can appear as `::ffff:10.0.0.5`. */
function plainAddress(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped ? mapped[1] : address;
}

/**
 * Who may relay: clients from the listed networks, and users who authenticated. Nobody
 * else, so the relay can never be an open relay.
 */
export class ClientAuthorization {
  #networks = new net.BlockList();
  #users = new Map<string, ClientUser>();
  /** Passwords already verified, by a salted digest: scrypt is meant to be slow, once. */
  #verified = new Map<string, Buffer>();

  constructor(clients: Config['clients']) {
    for (const entry of clients.networks) {
      const [address, bits] = entry.split('/');
      const family = net.isIPv4(address) ? 'ipv4' : 'ipv6';
      if (bits === undefined) this.#networks.addAddress(address, family);
      else this.#networks.addSubnet(address, Number(bits), family);
    }
    for (const user of clients.users) this.#users.set(user.name, user);
  }

  get hasUsers(): boolean {
    return this.#users.size > 0;
  }

  inNetworks(address: string): boolean {
    const plain = plainAddress(address);
    return this.#networks.check(plain, net.isIPv4(plain) ? 'ipv4' : 'ipv6');
  }

  async authenticate(name: string, password: string): Promise<ClientUser | undefined> {
    const user = this.#users.get(name);
    if (!user) return undefined;
    const digest = createHash('sha256').update(`${user.password}\0${password}`).digest();
    const known = this.#verified.get(name);
    if (known && timingSafeEqual(known, digest)) return user;
    if (!(await verifyPassword(password, user.password))) return undefined;
    this.#verified.set(name, digest);
    return user;
  }

  user(name: string): ClientUser | undefined {
    return this.#users.get(name);
  }

  /** A user limited to sender domains may use those domains and their subdomains only. */
  senderAllowed(user: ClientUser | undefined, sender: string): boolean {
    if (!user?.senderDomains || sender === '') return true;
    const domain = sender.slice(sender.lastIndexOf('@') + 1).toLowerCase();
    return user.senderDomains.some((allowed) => domain === allowed || domain.endsWith(`.${allowed}`));
  }
}
