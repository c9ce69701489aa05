import { createHash, timingSafeEqual } from 'node:crypto';
import type net from 'node:net';
import type { Config, ClientUser } from '../config/index.ts';
import { inList, networkList } from '../ip/index.ts';
import { verifyPassword } from './passwords.ts';

/**
 * Who may relay: clients from the listed networks, and users who authenticated. Nobody
 * else, so the relay can never be an open relay.
 */
/** Who the client is: a trusted network or an authenticated user, and the sender domains it may use. */
export interface Client {
  user?: string;
  /** Undefined: any sender domain. */
  senderDomains?: string[];
}

export class ClientAuthorization {
  #networks: { list: net.BlockList; senderDomains?: string[] }[] = [];
  #users = new Map<string, ClientUser>();
  /** Passwords already verified, by a salted digest: scrypt is meant to be slow, once. */
  #verified = new Map<string, Buffer>();

  constructor(clients: Config['clients']) {
    for (const entry of clients.networks) {
      this.#networks.push({ list: networkList(entry.network), senderDomains: entry.senderDomains });
    }
    for (const user of clients.users) this.#users.set(user.name, user);
  }

  get hasUsers(): boolean {
    return this.#users.size > 0;
  }

  /** The client relaying: the authenticated user, else the first trusted network it is in, else nobody. */
  client(address: string, userName: string | undefined): Client | undefined {
    if (userName !== undefined) {
      const user = this.#users.get(userName);
      return user ? { user: user.name, senderDomains: user.senderDomains } : undefined;
    }
    const network = this.#networks.find((entry) => inList(entry.list, address));
    return network ? { senderDomains: network.senderDomains } : undefined;
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
}
