// IP addresses as the relay writes them: one canonical text form, and the DNS name of each
// address's PTR. The ground floor: config, DNS, identity, delivery and inbound all parse addresses.
import net from 'node:net';

/**
 * The eight 16-bit pieces of an IPv6 address in any RFC 4291 §2.2 text form: `::` expanded,
 * and a dotted-quad tail (form 3, `x:x:x:x:x:x:d.d.d.d`) read as the last two pieces.
 */
function pieces(ipv6: string): number[] {
  const hex = ipv6.replace(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/, (_, a: string, b: string, c: string, d: string) =>
    `${(Number(a) * 256 + Number(b)).toString(16)}:${(Number(c) * 256 + Number(d)).toString(16)}`,
  );
  const [head, tail] = hex.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  return groups.map((group) => parseInt(group, 16));
}

/**
 * The one text form the relay compares, binds, reverses and shows an address in, or
 * undefined when the text is no address. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, in
 * either notation) is that IPv4 address (RFC 4291 §2.5.5.2), as SPF also treats it (RFC 7208
 * §5): it gets its dotted quad. Any other IPv6 address gets RFC 5952 text, as AAAA answers
 * come back; `CAFE:BABE::192.168.218.40` is `cafe:babe::c0a8:da28`.
 */
export function canonicalAddress(text: string): string | undefined {
  if (net.isIPv4(text)) return text;
  if (!net.isIPv6(text)) return undefined;
  const address = new net.SocketAddress({ address: text, family: 'ipv6' }).address;
  const [a, b, c, d, e, f, g, h] = pieces(address);
  if (a === 0 && b === 0 && c === 0 && d === 0 && e === 0 && f === 0xffff) return [g >> 8, g & 0xff, h >> 8, h & 0xff].join('.');
  return address;
}

/** The in-addr.arpa / ip6.arpa name whose PTR names an address (RFC 1035 §3.5, RFC 3596 §2.5). */
export function reverseName(ip: string): string {
  const address = canonicalAddress(ip);
  if (address === undefined) throw new TypeError(`not an IP address: ${JSON.stringify(ip)}`);
  if (net.isIPv4(address)) return `${address.split('.').reverse().join('.')}.in-addr.arpa`;
  const nibbles = pieces(address).map((piece) => piece.toString(16).padStart(4, '0')).join('');
  return `${[...nibbles].reverse().join('.')}.ip6.arpa`;
}

/** An address or CIDR network, as the config writes them, as a list `check` can ask about. */
export function networkList(network: string): net.BlockList {
  const [address, bits] = network.split('/');
  const family = net.isIPv4(address) ? 'ipv4' : 'ipv6';
  const list = new net.BlockList();
  if (bits === undefined) list.addAddress(address, family);
  else list.addSubnet(address, Number(bits), family);
  return list;
}

/** Whether `address` (any text form, IPv4-mapped included) is in `list`. */
export function inList(list: net.BlockList, address: string): boolean {
  // IPv4 peers of a dual-stack listener can appear as `::ffff:10.0.0.5`: they are IPv4 clients.
  const plain = canonicalAddress(address) ?? address;
  return list.check(plain, net.isIPv4(plain) ? 'ipv4' : 'ipv6');
}
