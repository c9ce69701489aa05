import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { Resolver } from 'node:dns/promises';
import net from 'node:net';
import { test, type TestContext } from 'node:test';
import dnsPacket from 'dns-packet';
import type { DecodedPacket, Packet } from 'dns-packet';
import { DnsServer, reverseName, type DnsServerOptions } from './dns-server.ts';

async function startServer(t: TestContext, options?: DnsServerOptions): Promise<DnsServer> {
  const server = await DnsServer.start(options);
  t.after(() => server.close());
  return server;
}

function resolverFor(server: DnsServer): Resolver {
  const resolver = new Resolver({ timeout: 500, tries: 1 });
  resolver.setServers([server.address]);
  return resolver;
}

function query(name: string, type: 'A' | 'TXT' | 'MX' | 'AAAA', extra: Partial<Packet> = {}): Packet {
  return { type: 'query', id: 4242, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type }], ...extra };
}

/** One raw UDP exchange, for what node's resolver does not expose (flags, authority section). */
function udpExchange(server: DnsServer, message: Buffer): Promise<{ raw: Buffer; packet: DecodedPacket }> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket('udp4');
    socket.on('error', reject);
    socket.on('message', (raw) => {
      socket.close();
      resolve({ raw, packet: dnsPacket.decode(raw) });
    });
    socket.send(message, server.port, server.host);
  });
}

/** Sends `chunks` on one TCP connection and collects `expected` length-prefixed answers. */
function tcpExchange(server: DnsServer, chunks: Buffer[], expected: number): Promise<DecodedPacket[]> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(server.port, server.host);
    const answers: DecodedPacket[] = [];
    let pending: Buffer = Buffer.alloc(0);
    socket.on('error', reject);
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
        const length = pending.readUInt16BE(0);
        answers.push(dnsPacket.decode(pending.subarray(2, 2 + length)));
        pending = pending.subarray(2 + length);
      }
      if (answers.length >= expected) {
        socket.end();
        resolve(answers);
      }
    });
    socket.on('connect', () => {
      // Separate writes with a round trip in between would not exercise reassembly; these
      // are written back to back so one frame may arrive split or several in one chunk.
      for (const chunk of chunks) socket.write(chunk);
    });
  });
}

function framed(message: Buffer): Buffer {
  const prefix = Buffer.alloc(2);
  prefix.writeUInt16BE(message.length);
  return Buffer.concat([prefix, message]);
}

// Node 24 also puts `type: 'MX'` on each result; only the two standard fields matter here.
async function mxOf(resolver: Resolver, name: string): Promise<Array<{ exchange: string; priority: number }>> {
  const records = await resolver.resolveMx(name);
  return records.map(({ exchange, priority }) => ({ exchange, priority })).sort((a, b) => a.priority - b.priority);
}

function rcodeOf(raw: Buffer): number {
  return raw.readUInt16BE(2) & 0xf;
}

test('serves A and AAAA, names case-insensitive with or without the trailing dot', async (t) => {
  const server = await startServer(t);
  server
    .add('Mail.Example.COM.', { type: 'A', data: '127.0.0.10' })
    .add('mail.example.com', { type: 'A', data: '127.0.0.11' })
    .add('mail.example.com', { type: 'AAAA', data: '::1' });
  const resolver = resolverFor(server);
  assert.deepEqual((await resolver.resolve4('MAIL.example.com')).sort(), ['127.0.0.10', '127.0.0.11']);
  assert.deepEqual(await resolver.resolve6('mail.example.com.'), ['::1']);
  assert.equal(server.address, `127.0.0.1:${server.port}`);
});

test('TTLs: 300 by default, per record when given', async (t) => {
  const server = await startServer(t);
  server.add('a.example.com', { type: 'A', data: '127.0.0.1' });
  server.add('b.example.com', { type: 'A', data: '127.0.0.2', ttl: 42 });
  const resolver = resolverFor(server);
  assert.deepEqual(await resolver.resolve4('a.example.com', { ttl: true }), [{ address: '127.0.0.1', ttl: 300 }]);
  assert.deepEqual(await resolver.resolve4('b.example.com', { ttl: true }), [{ address: '127.0.0.2', ttl: 42 }]);
});

test('MX, including a null MX', async (t) => {
  const server = await startServer(t);
  server
    .add('example.com', { type: 'MX', data: { preference: 10, exchange: 'mx1.example.com' } })
    .add('example.com', { type: 'MX', data: { preference: 20, exchange: 'mx2.example.com.' } })
    .add('nomail.example', { type: 'MX', data: { preference: 0, exchange: '.' } });
  const resolver = resolverFor(server);
  const mx = await mxOf(resolver, 'example.com');
  assert.deepEqual(mx, [
    { exchange: 'mx1.example.com', priority: 10 },
    { exchange: 'mx2.example.com', priority: 20 },
  ]);
  assert.deepEqual(await mxOf(resolver, 'nomail.example'), [{ exchange: '', priority: 0 }]);
});

test('TXT: a short record stays on UDP', async (t) => {
  const server = await startServer(t);
  server.add('example.com', { type: 'TXT', data: 'v=spf1 ip4:127.0.0.0/8 -all' });
  server.add('example.com', { type: 'TXT', data: ['two', 'chunks'] });
  const resolver = resolverFor(server);
  const txt = await resolver.resolveTxt('example.com');
  assert.deepEqual(
    txt.map((chunks) => chunks.join('')).sort(),
    ['twochunks', 'v=spf1 ip4:127.0.0.0/8 -all'],
  );
  assert.deepEqual(server.queries, [{ name: 'example.com', type: 'TXT', transport: 'udp' }]);
});

test('SPF (type 99): served in TXT format, apart from the TXT records of the name', async (t) => {
  const server = await startServer(t);
  server.add('example.com', { type: 'SPF', data: ['v=spf1 ', '-all'] });
  // dns-packet's types do not list SPF, its codec does (as type 99 with raw rdata).
  const { packet } = await udpExchange(server, dnsPacket.encode(query('example.com', 'SPF' as unknown as 'TXT')));
  const [answer] = (packet.answers ?? []) as unknown as { type: string; data: Buffer }[];
  assert.deepEqual([answer.type, answer.data], ['SPF', Buffer.from('\x07v=spf1 \x04-all', 'latin1')]);
  await assert.rejects(resolverFor(server).resolveTxt('example.com'), { code: 'ENODATA' });
});

test('TXT: a 600-byte record is split into 255-byte strings and, too big for UDP, arrives over TCP', async (t) => {
  const server = await startServer(t);
  let spf = 'v=spf1';
  for (let i = 0; spf.length < 590; i++) spf += ` ip4:127.0.${i}.0/24`;
  spf = `${spf} -all`.padEnd(600, ' ');
  assert.equal(spf.length, 600);
  server.add('example.com', { type: 'TXT', data: spf });
  const resolver = resolverFor(server);
  const txt = await resolver.resolveTxt('example.com');
  assert.equal(txt.length, 1);
  assert.deepEqual(txt[0].map((chunk) => chunk.length), [255, 255, 90]);
  assert.equal(txt[0].join(''), spf);
  assert.deepEqual(server.queries, [
    { name: 'example.com', type: 'TXT', transport: 'udp' },
    { name: 'example.com', type: 'TXT', transport: 'tcp' },
  ]);
  assert.equal(server.count('example.com', 'TXT'), 2);
});

test('UDP answers over 512 bytes are truncated with TC, unless EDNS advertised room for them', async (t) => {
  const server = await startServer(t);
  server.add('big.example', { type: 'TXT', data: 'x'.repeat(700) });

  const plain = await udpExchange(server, dnsPacket.encode(query('big.example', 'TXT')));
  assert.equal(plain.packet.flag_tc, true);
  assert.equal(plain.packet.answers?.length, 0);
  assert.ok(plain.raw.length <= 512);

  const edns = await udpExchange(
    server,
    dnsPacket.encode(
      query('big.example', 'TXT', {
        additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 4096, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false, options: [] }],
      }),
    ),
  );
  assert.equal(edns.packet.flag_tc, false);
  assert.equal(edns.packet.answers?.length, 1);
  assert.ok(edns.packet.additionals?.some((a) => a.type === 'OPT'));
});

test('responses are authoritative and echo the id, question and RD bit', async (t) => {
  const server = await startServer(t);
  server.add('example.com', { type: 'A', data: '127.0.0.1' });
  const { packet } = await udpExchange(server, dnsPacket.encode(query('Example.com', 'A')));
  assert.equal(packet.id, 4242);
  assert.equal(packet.flag_qr, true);
  assert.equal(packet.flag_aa, true);
  assert.equal(packet.flag_rd, true);
  assert.deepEqual(packet.questions, [{ name: 'Example.com', type: 'A', class: 'IN' }]);
});

test('PTR via reverse, IPv4 and IPv6, with the forward record added', async (t) => {
  const server = await startServer(t);
  server.addPtr('127.0.0.10', 'out1.relay.example').addPtr('fd00::a', 'out6.relay.example');
  server.addPtr('127.0.0.20', 'noforward.relay.example', { forward: false });
  const resolver = resolverFor(server);
  assert.deepEqual(await resolver.reverse('127.0.0.10'), ['out1.relay.example']);
  assert.deepEqual(await resolver.reverse('fd00::a'), ['out6.relay.example']);
  assert.deepEqual(await resolver.resolve4('out1.relay.example'), ['127.0.0.10']);
  assert.deepEqual(await resolver.resolve6('out6.relay.example'), ['fd00::a']);
  assert.deepEqual(await resolver.reverse('127.0.0.20'), ['noforward.relay.example']);
  await assert.rejects(resolver.resolve4('noforward.relay.example'), { code: 'ENOTFOUND' });
  assert.equal(reverseName('127.0.0.10'), '10.0.0.127.in-addr.arpa');
  assert.equal(
    reverseName('2001:db8::567:89ab'),
    'b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa',
  );
  assert.equal(reverseName('::ffff:127.0.0.1'), `${'1.0.0.0.0.0.f.7.f.f.f.f'}.${'0.'.repeat(20)}ip6.arpa`);
});

test('CNAME: the chain is answered and followed within the server', async (t) => {
  const server = await startServer(t);
  server
    .add('www.example.com', { type: 'CNAME', data: 'alias.example.com' })
    .add('alias.example.com', { type: 'CNAME', data: 'host.example.net.' })
    .add('host.example.net', { type: 'A', data: '127.0.0.5', ttl: 30 });
  const resolver = resolverFor(server);
  assert.deepEqual(await resolver.resolve4('www.example.com', { ttl: true }), [{ address: '127.0.0.5', ttl: 30 }]);
  assert.deepEqual(await resolver.resolveCname('www.example.com'), ['alias.example.com']);

  const { packet } = await udpExchange(server, dnsPacket.encode(query('www.example.com', 'A')));
  assert.deepEqual(
    packet.answers?.map((a) => [a.name, a.type, 'data' in a ? a.data : undefined]),
    [
      ['www.example.com', 'CNAME', 'alias.example.com'],
      ['alias.example.com', 'CNAME', 'host.example.net'],
      ['host.example.net', 'A', '127.0.0.5'],
    ],
  );
});

test('CNAME loops end instead of spinning', async (t) => {
  const server = await startServer(t);
  server.add('a.example', { type: 'CNAME', data: 'b.example' }).add('b.example', { type: 'CNAME', data: 'a.example' });
  const { packet } = await udpExchange(server, dnsPacket.encode(query('a.example', 'A')));
  assert.equal(packet.answers?.length, 2);
});

test('NXDOMAIN -> ENOTFOUND, NODATA -> ENODATA, both with an SOA carrying the negative TTL', async (t) => {
  const server = await startServer(t, { negativeTtl: 15 });
  server.add('deep.sub.example.com', { type: 'A', data: '127.0.0.1' });
  const resolver = resolverFor(server);
  await assert.rejects(resolver.resolve4('missing.example.com'), { code: 'ENOTFOUND' });
  await assert.rejects(resolver.resolveMx('deep.sub.example.com'), { code: 'ENODATA' });
  // An empty non-terminal exists, so it is NODATA too (RFC 8020).
  await assert.rejects(resolver.resolve4('sub.example.com'), { code: 'ENODATA' });

  const nx = await udpExchange(server, dnsPacket.encode(query('missing.example.com', 'A')));
  assert.equal(rcodeOf(nx.raw), 3);
  assert.equal(nx.packet.flag_aa, true);
  const soa = nx.packet.authorities?.[0];
  assert.equal(soa?.type, 'SOA');
  assert.equal(soa?.name, 'example.com');
  assert.equal(soa?.ttl, 15);
  assert.equal(soa?.type === 'SOA' ? soa.data.minimum : undefined, 15);

  const nodata = await udpExchange(server, dnsPacket.encode(query('deep.sub.example.com', 'MX')));
  assert.equal(rcodeOf(nodata.raw), 0);
  assert.equal(nodata.packet.answers?.length, 0);
  assert.equal(nodata.packet.authorities?.[0]?.type, 'SOA');
});

test('faults: servfail, timeout, refused and nxdomain, per type or for every type, and cleared', async (t) => {
  const server = await startServer(t);
  server
    .add('example.com', { type: 'A', data: '127.0.0.1' })
    .add('example.com', { type: 'MX', data: { preference: 10, exchange: 'mx.example.com' } })
    .add('example.com', { type: 'TXT', data: 'hello' });
  const resolver = resolverFor(server);

  server.fault('example.com', 'MX', 'servfail');
  await assert.rejects(resolver.resolveMx('example.com'), { code: 'ESERVFAIL' });
  assert.deepEqual(await resolver.resolve4('example.com'), ['127.0.0.1']);

  server.fault('example.com', 'mx', 'timeout');
  await assert.rejects(resolver.resolveMx('example.com'), { code: 'ETIMEOUT' });

  server.fault('Example.com.', 'MX', 'refused');
  await assert.rejects(resolver.resolveMx('example.com'), { code: 'EREFUSED' });

  server.fault('example.com', 'MX', 'nxdomain');
  await assert.rejects(resolver.resolveMx('example.com'), { code: 'ENOTFOUND' });

  server.fault('example.com', 'MX', null);
  assert.deepEqual(await mxOf(resolver, 'example.com'), [{ exchange: 'mx.example.com', priority: 10 }]);

  server.fault('example.com', '*', 'servfail').fault('example.com', 'TXT', 'refused');
  await assert.rejects(resolver.resolve4('example.com'), { code: 'ESERVFAIL' });
  await assert.rejects(resolver.resolveTxt('example.com'), { code: 'EREFUSED' });
  server.fault('example.com', '*', null).fault('example.com', 'TXT', null);
  assert.deepEqual(await resolver.resolveTxt('example.com'), [['hello']]);

  // Faulted questions are still logged: a test may want to see the resolver retried.
  assert.equal(server.count('example.com', 'MX'), 5);
});

test('a timeout fault over TCP leaves the connection open without an answer', async (t) => {
  const server = await startServer(t);
  server.add('slow.example', { type: 'A', data: '127.0.0.1' }).add('fast.example', { type: 'A', data: '127.0.0.2' });
  server.fault('slow.example', 'A', 'timeout');
  const answers = await tcpExchange(
    server,
    [framed(dnsPacket.encode(query('slow.example', 'A'))), framed(dnsPacket.encode({ ...query('fast.example', 'A'), id: 7 }))],
    1,
  );
  assert.equal(answers[0].id, 7);
  assert.equal(server.count(undefined, 'A'), 2);
});

test('query log and counting, reset', async (t) => {
  const server = await startServer(t);
  server.add('example.com', { type: 'A', data: '127.0.0.1' });
  const resolver = resolverFor(server);
  await resolver.resolve4('example.com');
  await resolver.resolve4('EXAMPLE.com');
  await assert.rejects(resolver.resolveMx('example.com'), { code: 'ENODATA' });
  await assert.rejects(resolver.resolve4('other.example'), { code: 'ENOTFOUND' });
  assert.equal(server.count(), 4);
  assert.equal(server.count('example.com'), 3);
  assert.equal(server.count('Example.COM.', 'a'), 2);
  assert.equal(server.count(undefined, 'MX'), 1);
  assert.deepEqual(server.queries.at(-1), { name: 'other.example', type: 'A', transport: 'udp' });
  server.resetLog();
  assert.equal(server.count(), 0);
  assert.deepEqual(server.queries, []);
});

test('set replaces records of the given types only; remove by type or whole name', async (t) => {
  const server = await startServer(t);
  server
    .add('example.com', { type: 'A', data: '127.0.0.1' })
    .add('example.com', { type: 'A', data: '127.0.0.2' })
    .add('example.com', { type: 'TXT', data: 'keep' });
  const resolver = resolverFor(server);

  server.set('example.com', [{ type: 'A', data: '127.0.0.3' }]);
  assert.deepEqual(await resolver.resolve4('example.com'), ['127.0.0.3']);
  assert.deepEqual(await resolver.resolveTxt('example.com'), [['keep']]);

  // Re-adding an identical record changes its TTL instead of duplicating it.
  server.add('example.com', { type: 'A', data: '127.0.0.3', ttl: 5 });
  assert.deepEqual(await resolver.resolve4('example.com', { ttl: true }), [{ address: '127.0.0.3', ttl: 5 }]);

  server.remove('example.com', 'a');
  await assert.rejects(resolver.resolve4('example.com'), { code: 'ENODATA' });
  server.remove('example.com');
  await assert.rejects(resolver.resolveTxt('example.com'), { code: 'ENOTFOUND' });
});

test('TCP: several queries on one connection, frames split and coalesced, same port as UDP', async (t) => {
  const server = await startServer(t);
  server.add('one.example', { type: 'A', data: '127.0.0.1' }).add('two.example', { type: 'A', data: '127.0.0.2' });
  const first = framed(dnsPacket.encode({ ...query('one.example', 'A'), id: 1 }));
  const second = framed(dnsPacket.encode({ ...query('two.example', 'A'), id: 2 }));
  const third = framed(dnsPacket.encode({ ...query('nope.example', 'A'), id: 3 }));
  const stream = Buffer.concat([first, second, third]);
  const answers = await tcpExchange(server, [stream.subarray(0, 1), stream.subarray(1, first.length + 5), stream.subarray(first.length + 5)], 3);
  assert.deepEqual(
    answers.map((a) => [a.id, a.answers?.map((r) => ('data' in r ? r.data : undefined))]),
    [
      [1, ['127.0.0.1']],
      [2, ['127.0.0.2']],
      [3, []],
    ],
  );
  assert.deepEqual(
    server.queries.map((q) => q.transport),
    ['tcp', 'tcp', 'tcp'],
  );
});

test('malformed packets are ignored and the server keeps answering', async (t) => {
  const server = await startServer(t);
  server.add('example.com', { type: 'A', data: '127.0.0.1' });
  const garbage = [Buffer.from('hello'), Buffer.alloc(0), Buffer.from([0, 1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0xc0])];
  const udp = dgram.createSocket('udp4');
  t.after(() => udp.close());
  for (const packet of garbage) {
    await new Promise<void>((resolve, reject) => udp.send(packet, server.port, server.host, (e) => (e ? reject(e) : resolve())));
  }
  // A response sent to the server must not be answered either.
  await new Promise<void>((resolve, reject) =>
    udp.send(dnsPacket.encode({ ...query('example.com', 'A'), type: 'response' }), server.port, server.host, (e) =>
      e ? reject(e) : resolve(),
    ),
  );
  const tcpAnswers = await tcpExchange(
    server,
    [...garbage.map(framed), framed(dnsPacket.encode({ ...query('example.com', 'A'), id: 9 }))],
    1,
  );
  assert.equal(tcpAnswers[0].id, 9);
  const resolver = resolverFor(server);
  assert.deepEqual(await resolver.resolve4('example.com'), ['127.0.0.1']);
});

test('refuses bad records at add time', async (t) => {
  const server = await startServer(t);
  assert.throws(() => server.add('example.com', { type: 'A', data: '::1' }), /IPv4/);
  assert.throws(() => server.add('example.com', { type: 'AAAA', data: '127.0.0.1' }), /IPv6/);
  assert.throws(() => server.add('a..example.com', { type: 'A', data: '127.0.0.1' }), /valid domain/);
  assert.throws(() => server.add(`${'x'.repeat(64)}.example`, { type: 'A', data: '127.0.0.1' }), /valid domain/);
  assert.throws(() => server.add('example.com', { type: 'TXT', data: ['y'.repeat(256)] }), /255/);
  assert.throws(() => server.addPtr('not-an-ip', 'host.example'), /not an IP/);
});

test('two servers get distinct ports; close is idempotent', async (t) => {
  const a = await startServer(t);
  const b = await startServer(t);
  assert.notEqual(a.port, b.port);
  await a.close();
  await a.close();
});
