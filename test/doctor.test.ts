import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify } from 'yaml';
import { doctorReportSchema, type DoctorReport } from '../src/doctor/index.ts';
import { makeKey, type TestKey } from './harness/dkim.ts';
import type { DnsServer } from './harness/dns-server.ts';
import { RelayProcess, runCli } from './harness/process.ts';
import { Internet } from './harness/world.ts';

/** The records a sending domain needs, all correct: PTR and A of its egress, SPF, the DKIM key, DMARC. */
function publishCorrect(dns: DnsServer, domain: string, ip: string, key: TestKey): void {
  dns.addPtr(ip, `relay.${domain}`);
  dns.add(domain, { type: 'TXT', data: `v=spf1 ip4:${ip} -all` });
  dns.add(`s1._domainkey.${domain}`, { type: 'TXT', data: key.record });
  dns.add(`_dmarc.${domain}`, { type: 'TXT', data: `v=DMARC1; p=reject; rua=mailto:dmarc@${domain}` });
}

/** One way to break a correct deployment, and what doctor must say about it. */
interface Case {
  name: string;
  /** Changes the correct records (or the config) of `domain` sending from `ip`. */
  breaks: (dns: DnsServer, domain: string, ip: string) => void;
  egress?: (ip: string) => Record<string, unknown>;
  check: string;
  status: 'warn' | 'fail';
  /** The line of the check, and a fix printed under it, in the text output. */
  line: (domain: string, ip: string) => RegExp;
  fix: (domain: string, ip: string) => string;
}

function reverse(ip: string): string {
  return ip.split('.').reverse().join('.');
}

const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

const CASES: Case[] = [
  {
    name: 'PTR missing',
    breaks: (dns, _domain, ip) => dns.remove(`${reverse(ip)}.in-addr.arpa`),
    check: 'egress.ptr',
    status: 'fail',
    line: (_domain, ip) => new RegExp(`^FAIL ${escape(ip)} PTR: no PTR record at ${escape(reverse(ip))}\\.in-addr\\.arpa`, 'm'),
    fix: (domain, ip) => `${reverse(ip)}.in-addr.arpa. IN PTR mail.${domain}.`,
  },
  {
    name: 'PTR not forward-confirming',
    breaks: (dns, domain) => dns.remove(`relay.${domain}`, 'A'),
    check: 'egress.fcrdns',
    status: 'fail',
    line: (domain, ip) => new RegExp(`^FAIL ${escape(ip)} forward-confirmed PTR: PTR of ${escape(ip)} is relay\\.${escape(domain)}, but that name does not resolve back`, 'm'),
    fix: (domain, ip) => `relay.${domain}. IN A ${ip}`,
  },
  {
    name: 'HELO not matching the PTR',
    breaks: () => {},
    egress: (ip) => ({ ip, helo: 'mail.elsewhere.test' }),
    check: 'egress.helo',
    status: 'fail',
    line: (domain, ip) => new RegExp(`^FAIL ${escape(ip)} HELO: the relay says EHLO mail\\.elsewhere\\.test \\(helo: mail\\.elsewhere\\.test\\), but the PTR of ${escape(ip)} names relay\\.${escape(domain)}`, 'm'),
    fix: (domain, ip) => `egress ${ip}: helo: auto (or helo: relay.${domain}) in the configuration`,
  },
  {
    name: 'SPF missing the egress IP',
    breaks: (dns, domain) => dns.set(domain, [{ type: 'TXT', data: 'v=spf1 ip4:192.0.2.1 -all' }]),
    check: 'spf.authorizes',
    status: 'fail',
    line: (domain, ip) => new RegExp(`^FAIL ${escape(domain)} SPF authorizes: the SPF record of ${escape(domain)} \\("v=spf1 ip4:192\\.0\\.2\\.1 -all"\\) does not authorize ${escape(ip)} \\(fail\\)`, 'm'),
    fix: (domain, ip) => `${domain}. IN TXT "v=spf1 ip4:${ip} ip4:192.0.2.1 -all"`,
  },
  {
    name: 'two SPF records',
    breaks: (dns, domain) => dns.add(domain, { type: 'TXT', data: 'v=spf1 ip4:192.0.2.7 ~all' }),
    check: 'spf.record',
    status: 'fail',
    line: (domain) => new RegExp(`^FAIL ${escape(domain)} SPF record: ${escape(domain)} publishes 2 SPF records .*permerror for every sender \\(RFC 7208 §4\\.5\\)`, 'm'),
    fix: (domain, ip) => `${domain}. IN TXT "v=spf1 ip4:${ip} ip4:192.0.2.7 -all"`,
  },
  {
    name: 'SPF over 10 lookups',
    breaks: (dns, domain, ip) => {
      const includes = Array.from({ length: 11 }, (_, i) => `include:s${i + 1}.${domain}`);
      dns.set(domain, [{ type: 'TXT', data: `v=spf1 ip4:${ip} ${includes.join(' ')} -all` }]);
      for (let i = 1; i <= 11; i++) dns.add(`s${i}.${domain}`, { type: 'TXT', data: `v=spf1 ip4:192.0.2.${i} -all` });
    },
    check: 'spf.limits',
    status: 'fail',
    line: (domain) => new RegExp(`^FAIL ${escape(domain)} SPF lookup limits: the SPF record of ${escape(domain)} needs more than 10 DNS lookups`, 'm'),
    fix: (domain, ip) => `${domain}. IN TXT "v=spf1 ip4:${ip} ${Array.from({ length: 11 }, (_, i) => `ip4:192.0.2.${i + 1}`).join(' ')} -all"`,
  },
  {
    name: 'SPF using ptr (a warning, with the ip4: term instead)',
    breaks: (dns, domain) => dns.set(domain, [{ type: 'TXT', data: 'v=spf1 ptr -all' }]),
    check: 'spf.ptr',
    status: 'warn',
    line: (domain, ip) => new RegExp(`^WARN ${escape(domain)} SPF ptr: uses ptr, which RFC 7208 §5\\.5 says SHOULD NOT be used .*: name the relay's addresses with ip4:${escape(ip)} instead`, 'm'),
    fix: (domain, ip) => `${domain}. IN TXT "v=spf1 ip4:${ip} -all"`,
  },
  {
    name: 'DKIM TXT with another key',
    breaks: (dns, domain) => dns.set(`s1._domainkey.${domain}`, [{ type: 'TXT', data: otherKey.record }]),
    check: 'dkim.published',
    status: 'fail',
    line: (domain) => new RegExp(`^FAIL ${escape(domain)} selector s1 DKIM published: s1\\._domainkey\\.${escape(domain)} publishes a different key \\(k=rsa\\) \\(rsa-sha256 2048 bits, active\\)$`, 'm'),
    fix: (domain) => `s1._domainkey.${domain}. IN TXT "${key.record.slice(0, 255)}" "${key.record.slice(255)}"`,
  },
  {
    name: 'no DMARC record',
    breaks: (dns, domain) => dns.remove(`_dmarc.${domain}`),
    check: 'dmarc.record',
    status: 'fail',
    line: (domain) => new RegExp(`^FAIL ${escape(domain)} DMARC record: no DMARC record at _dmarc\\.${escape(domain)}`, 'm'),
    fix: (domain) => `_dmarc.${domain}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@${domain}"`,
  },
  {
    name: 'egress listed in a blocklist with a ZEN code',
    breaks: (dns, _domain, ip) => dns.add(`${reverse(ip)}.zen.spamhaus.org`, { type: 'A', data: '127.0.0.4' }),
    check: 'egress.blocklist',
    status: 'fail',
    line: (_domain, ip) => new RegExp(`^FAIL ${escape(ip)} blocklist: listed in zen\\.spamhaus\\.org \\(127\\.0\\.0\\.4 XBL: exploited host`, 'm'),
    fix: () => 'find and stop the cause, then ask for removal: https://check.spamhaus.org/',
  },
  {
    name: 'a blocklist answering 127.255.255.254 (the resolver, not a listing)',
    breaks: (dns, _domain, ip) => dns.add(`${reverse(ip)}.zen.spamhaus.org`, { type: 'A', data: '127.255.255.254' }),
    check: 'egress.blocklist',
    status: 'warn',
    line: (_domain, ip) => new RegExp(`^WARN ${escape(ip)} blocklist: zen\\.spamhaus\\.org refused the query \\(127\\.255\\.255\\.254: query through a public or open resolver.*\\): the resolver cannot ask this list, which says nothing of ${escape(ip)}$`, 'm'),
    fix: () => 'dns.servers: a resolver of your own that queries the list directly, not a public one (8.8.8.8, 1.1.1.1, 9.9.9.9)',
  },
];

let key: TestKey;
let otherKey: TestKey;

// Each case has its own egress address, domain and config file, so none sees another's breakage.
describe('doctor', () => {
  let dir: string;
  let internet: Internet;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'relay-doctor-'));
    internet = await Internet.start({ destinations: [], egress: [] });
    key = makeKey(dir, 'doctor.test', 's1', 'rsa');
    otherKey = makeKey(dir, 'other.test', 's1', 'rsa');
  });
  after(async () => {
    await internet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A deployment of its own (egress address, sending domain, config file), all records correct. */
  function deployment(n: number, egress?: Case['egress']): { domain: string; ip: string; file: string; config: Record<string, unknown> } {
    const domain = `d${n}.doctor.test`;
    const ip = `127.0.1.${n}`;
    publishCorrect(internet.dns, domain, ip, key);
    const file = path.join(dir, `${n}.yaml`);
    const config = {
      listeners: [{ host: '127.0.0.1', port: 0 }],
      egress: [egress ? egress(ip) : { ip }],
      dns: internet.dnsSettings(),
      domains: { [domain]: { dkim: [{ selector: 's1', key: key.file }] } },
    };
    writeFileSync(file, stringify(config));
    return { domain, ip, file, config };
  }

  async function doctor(file: string, ...args: string[]): Promise<{ code: number | null; stdout: string; report: DoctorReport }> {
    const [text, json] = await Promise.all([runCli(['doctor', '--config', file, ...args]), runCli(['doctor', '--config', file, '--json', ...args])]);
    assert.equal(text.stderr, '');
    assert.equal(json.stderr, '');
    assert.equal(json.code, text.code);
    // --json is the documented shape (docs/doctor.md), to the letter.
    const report = doctorReportSchema.parse(JSON.parse(json.stdout));
    return { code: text.code, stdout: text.stdout, report };
  }

  it('a fully correct domain passes every check: exit 0, one OK (or INFO) line each, --json of the documented shape', async () => {
    const { domain, ip, file } = deployment(1);
    const { code, stdout, report } = await doctor(file);
    assert.equal(code, 0, stdout);
    assert.equal(report.status, 'pass');
    assert.deepEqual(report.egress, [ip]);
    assert.deepEqual(report.domains, [domain]);
    assert.deepEqual(
      report.checks.filter((c) => c.status !== 'pass' && c.status !== 'info'),
      [],
    );
    const ids = new Set(report.checks.map((c) => c.check));
    for (const id of ['egress.ptr', 'egress.fcrdns', 'egress.helo', 'egress.blocklist', 'spf.record', 'spf.parses', 'spf.limits', 'spf.authorizes', 'spf.all', 'spf.ptr', 'dkim.published', 'dkim.size', 'dkim.algorithms', 'dmarc.record', 'dmarc.policy', 'dmarc.alignment', 'dmarc.rua', 'mta-sts.record', 'tls-rpt.record']) {
      assert.ok(ids.has(id as never), `${id} checked`);
    }
    // The three default lists, each asked.
    assert.deepEqual(
      report.checks.filter((c) => c.check === 'egress.blocklist').map((c) => c.message),
      ['not listed in zen.spamhaus.org', 'not listed in b.barracudacentral.org', 'not listed in bl.spamcop.net'],
    );
    assert.match(stdout, new RegExp(`^OK {3}${escape(ip)} PTR: ${escape(reverse(ip))}\\.in-addr\\.arpa names relay\\.${escape(domain)}$`, 'm'));
    assert.match(stdout, new RegExp(`^OK {3}${escape(domain)} SPF authorizes: ${escape(ip)} passes \\(EHLO relay\\.${escape(domain)}\\)$`, 'm'));
    assert.match(stdout, new RegExp(`^OK {3}${escape(domain)} DMARC alignment: mail From ${escape(domain)} passes, aligned by SPF and DKIM \\(aspf=r, adkim=r\\)$`, 'm'));
    assert.match(stdout, /^INFO d1\.doctor\.test MTA-STS: _mta-sts\.d1\.doctor\.test: none published/m);
    assert.match(stdout, /^OK {3}doctor: 0 failures, 0 warnings, \d+ passed, 2 for information\n$/m);
    assert.ok(stdout.split('\n').every((line) => !/^(WARN|FAIL)/.test(line)), stdout);
  });

  CASES.forEach((c, index) => {
    it(`${c.name}: ${c.status === 'fail' ? 'FAIL, exit 2' : 'WARN, exit 1'}, that check only, with the fix`, async () => {
      const { domain, ip, file } = deployment(index + 2, c.egress);
      c.breaks(internet.dns, domain, ip);
      const { code, stdout, report } = await doctor(file);
      const problems = report.checks.filter((r) => r.status === 'warn' || r.status === 'fail');
      assert.deepEqual(
        problems.map((r) => [r.check, r.status]),
        [[c.check, c.status]],
        stdout,
      );
      assert.equal(code, c.status === 'fail' ? 2 : 1);
      assert.equal(report.status, c.status);
      assert.ok(problems[0].fix.includes(c.fix(domain, ip)), `fix ${c.fix(domain, ip)} in ${JSON.stringify(problems[0].fix)}`);
      // In the text: the check's line, and the fix indented under it.
      const line = c.line(domain, ip);
      assert.match(stdout, line);
      const after = stdout.slice(stdout.search(line)).split('\n').slice(1);
      assert.ok(after.some((l) => l === `       ${c.fix(domain, ip)}`), stdout);
      if (c.status === 'warn' && c.check === 'egress.blocklist') assert.doesNotMatch(problems[0].message, /listed in/);
    });
  });

  it('--domain checks that domain only; --help prints the usage; a misused option is one line, exit 2', async () => {
    const { ip, file } = deployment(40);
    const other = deployment(41);
    const { report } = await doctor(file, '--domain', other.domain);
    assert.deepEqual(report.domains, [other.domain]);
    // The keys are the config's: d41's key is not configured in d40's file, so it is signed by none.
    assert.deepEqual(
      report.checks.filter((c) => c.status === 'warn' || c.status === 'fail').map((c) => [c.check, c.subject]),
      [['spf.authorizes', other.domain], ['dkim.keys', other.domain], ['dmarc.alignment', other.domain]],
    );
    assert.ok(report.checks.some((c) => c.check === 'egress.ptr' && c.subject === ip));
    const help = await runCli(['doctor', '--help']);
    assert.equal(help.code, 0);
    assert.ok(help.stdout.startsWith('usage: hygiene-relay doctor [--config FILE] [--json] [--domain D]\n'), help.stdout);
    const misuse = await runCli(['doctor', '--config', file, '--domain', 'not a domain']);
    assert.deepEqual(misuse, { code: 2, stdout: '', stderr: 'hygiene-relay: --domain must be a domain name, not "not a domain"; see hygiene-relay doctor --help\n' });
  });

  it('a starting relay logs the checks as one summary record and one per failure and warning; SIGHUP runs them again', async () => {
    const { domain, ip, config } = deployment(50);
    internet.dns.remove(`_dmarc.${domain}`);
    internet.dns.set(domain, [{ type: 'TXT', data: `v=spf1 ptr ip4:${ip} -all` }]);
    const relay = await RelayProcess.start(path.join(dir, 'running.yaml'), { ...config, http: null, control: { socket: null } });
    try {
      // logReport writes the summary first and the failures last.
      await relay.waitFor((r) => r.msg === `DNS check failed: ${domain} DMARC record`);
      const records = relay.records.filter((r) => r.component === 'doctor');
      assert.deepEqual(
        records.map((r) => [r.level, r.msg]),
        [
          ['error', 'DNS checks: 1 failure, 1 warning'],
          ['warn', `DNS check warning: ${domain} SPF ptr`],
          ['error', `DNS check failed: ${domain} DMARC record`],
        ],
      );
      assert.deepEqual(records[1].fix, [`${domain}. IN TXT "v=spf1 ip4:${ip} -all"`]);
      assert.equal(records[2].check, 'dmarc.record');
      assert.match(records[2].problem as string, /^no DMARC record at _dmarc\./);
      const counts = records[0].counts as { warn: number; fail: number };
      assert.deepEqual([counts.warn, counts.fail], [1, 1]);

      // The admin publishes the DMARC record and reloads: the checks see it at once.
      internet.dns.add(`_dmarc.${domain}`, { type: 'TXT', data: `v=DMARC1; p=reject; rua=mailto:dmarc@${domain}` });
      const mark = relay.records.length;
      relay.child.kill('SIGHUP');
      const again = await relay.waitFor((r) => r.component === 'doctor' && String(r.msg).startsWith('DNS checks:'), mark);
      assert.deepEqual([again.level, again.msg], ['warn', 'DNS checks: 0 failures, 1 warning']);
    } finally {
      await relay.stop();
    }
  });
});
