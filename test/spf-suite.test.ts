import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { parseAllDocuments } from 'yaml';
import { checkSpf, predict } from '../src/auth/index.ts';
import { parseConfig } from '../src/config/index.ts';
import { createResolver, type Resolver } from '../src/dns/index.ts';
import { canonicalAddress } from '../src/ip/index.ts';
import { createLogger } from '../src/observability/index.ts';
import { DnsServer, type RecordData } from './harness/dns-server.ts';

/**
 * The RFC 7208 test suite (openspf.org, release 2014.04) as Debian's python3-spf ships it,
 * run through the relay's own SPF evaluation, at MAIL FROM (checkSpf) and in the preflight
 * (predict), with its own resolver, each scenario's zone served by the harness DNS server.
 * The result is compared; a case's `explanation` (the exp= text) is not, as the relay
 * reports none. scripts/system-deps.sh installs the suite.
 */
const SUITE = '/usr/share/doc/python3-spf/rfc7208-tests.yml.gz';

/**
 * Every case is applicable: the relay evaluates its egress address, its HELO and the client's
 * MAIL FROM, and each may be what a case gives. The egress may be any address, IPv4-mapped
 * included; the HELO is the PTR name of the egress (whatever DNS holds there) or, for an
 * egress whose name does not verify, an address literal (RFC 5321 §4.1.3), as in
 * helo-domain-literal; MAIL FROM is the client's.
 */
const CASES = 203;

type Expected = string | string[];

interface Case {
  description?: string;
  spec?: string;
  helo: string;
  host: string;
  mailfrom: string;
  result: Expected;
}

type ZoneEntry = 'TIMEOUT' | Record<string, string | string[] | [number, string]>;

interface Scenario {
  description: string;
  tests: Record<string, Case>;
  zonedata?: Record<string, ZoneEntry[]>;
}

/** The types check_host() asks for (RFC 7208 §4.4, §5), and type 99 that it must not use (§3.1). */
const QUERIED_TYPES = ['TXT', 'SPF', 'A', 'AAAA', 'MX', 'PTR'] as const;

/**
 * A scenario's zone as the suite's drivers read it (pyspf's testspf.py): a name with SPF but
 * no TXT records also has them as TXT, since RFC 7208 uses TXT alone and the suite was
 * written for both; `TXT: NONE` says it has none; a bare `TIMEOUT` makes every question about
 * the name that none of its records answers time out.
 */
function serve(dns: DnsServer, zone: Record<string, ZoneEntry[]>): void {
  for (const [name, entries] of Object.entries(zone)) {
    const records: RecordData[] = [];
    let timeout = false;
    let txt = false;
    for (const entry of entries) {
      if (entry === 'TIMEOUT') {
        timeout = true;
        continue;
      }
      for (const [type, data] of Object.entries(entry)) {
        if (type === 'TXT') txt = true;
        if (data === 'NONE') continue;
        if (type === 'MX') {
          const [preference, exchange] = data as [number, string];
          records.push({ type, data: { preference, exchange } });
        } else if (type === 'TXT' || type === 'SPF') {
          records.push({ type, data: data as string | string[] });
        } else {
          records.push({ type: type as 'A' | 'AAAA' | 'PTR' | 'CNAME', data: data as string });
        }
      }
    }
    if (!txt) records.push(...records.flatMap((r) => (r.type === 'SPF' ? [{ ...r, type: 'TXT' as const }] : [])));
    for (const record of records) dns.add(name, record);
    if (timeout) {
      for (const type of QUERIED_TYPES) if (!records.some((r) => r.type === type)) dns.fault(name, type, 'timeout');
    }
  }
}

/** A message for the preflight: the SPF part of its verdict does not depend on it. */
async function* message(): AsyncGenerator<Buffer> {
  yield Buffer.from('From: <author@example.org>\r\nSubject: RFC 7208 suite\r\n\r\nHello.\r\n');
}

function matches(expected: Expected, got: string): boolean {
  return Array.isArray(expected) ? expected.includes(got) : expected === got;
}

const scenarios: Scenario[] = parseAllDocuments(gunzipSync(readFileSync(SUITE)).toString('utf8'))
  .map((document) => document.toJS() as Scenario | null)
  .filter((scenario): scenario is Scenario => scenario !== null);

describe('RFC 7208 test suite', () => {
  it('has every case of the suite', () => {
    assert.equal(scenarios.reduce((count, scenario) => count + Object.keys(scenario.tests).length, 0), CASES);
  });

  for (const scenario of scenarios) {
    describe(scenario.description, () => {
      let dns: DnsServer;
      let resolver: Resolver;
      before(async () => {
        dns = await DnsServer.start();
        serve(dns, scenario.zonedata ?? {});
        // The relay's resolver as it builds it, a fresh cache per zone; a timeout costs 300 ms.
        const config = parseConfig({ egress: [{ ip: '127.0.0.2' }], dns: { servers: [dns.address], timeout: '300ms', tries: 1 } });
        resolver = createResolver(config.dns, createLogger('silent'));
      });
      after(async () => {
        resolver.close();
        await dns.close();
      });

      for (const [id, testCase] of Object.entries(scenario.tests)) {
        it(`${id} (§${testCase.spec ?? '?'})`, async () => {
          // The egress address as the relay's configuration holds it: an IPv4-mapped one is IPv4.
          const ip = canonicalAddress(testCase.host);
          assert.ok(ip, `${id}: ${testCase.host} is no address`);
          const ctx = { resolve: resolver.resolve, ip, helo: testCase.helo };
          // At MAIL FROM, and inside the preflight's prediction of the receiver's verdict.
          const atMailFrom = await checkSpf(testCase.mailfrom, ctx);
          const predicted = await predict(message(), testCase.mailfrom, ctx);
          const inputs = `${testCase.description?.trim() ?? ''} mailfrom=${testCase.mailfrom} helo=${testCase.helo} host=${testCase.host}`;
          assert.ok(matches(testCase.result, atMailFrom.result), `${id}: expected ${JSON.stringify(testCase.result)}, got ${atMailFrom.result} at MAIL FROM (${inputs})`);
          assert.equal(predicted.spf.result, atMailFrom.result, `${id}: the preflight predicts ${predicted.spf.result}, MAIL FROM found ${atMailFrom.result} (${inputs})`);
        });
      }
    });
  }
});
