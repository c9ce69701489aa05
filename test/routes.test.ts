import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { send } from './harness/send.ts';
import { message, World } from './harness/world.ts';

const USER = 'relay@corp.example';
const PASSWORD = 'correct horse battery staple';

describe('routes to a smarthost with AUTH and required TLS', () => {
  let world: World;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'routes-test-'));
    const passwordFile = path.join(dir, 'smarthost.password');
    writeFileSync(passwordFile, `${PASSWORD}\n`, { mode: 0o600 });
    const auth = { user: USER, password: PASSWORD };
    world = await World.start({
      destinations: [
        // An ISP smarthost: AUTH before MAIL, over STARTTLS with a certificate for its name.
        { domain: 'isp.test', mx: [{ name: 'smtp.isp.test', ip: '127.0.0.40' }], auth },
        { domain: 'isp-login.test', mx: [{ name: 'smtp-login.isp.test', ip: '127.0.0.41' }], auth: { ...auth, methods: ['LOGIN'] } },
        // One without STARTTLS that would take credentials in the clear.
        { domain: 'isp-clear.test', mx: [{ name: 'smtp-clear.isp.test', ip: '127.0.0.42' }], starttls: false, auth: { ...auth, allowInsecure: true } },
        { domain: 'isp-badcert.test', mx: [{ name: 'smtp-badcert.isp.test', ip: '127.0.0.43', certificateNames: ['mail.elsewhere.test'] }] },
        { domain: 'partner.test', mx: [{ name: 'mx.partner.test', ip: '127.0.0.44' }] },
      ],
      config: (internet) => {
        const route = (host: string, extra: Record<string, unknown>) => ({ host, port: internet.mxPort, ...extra });
        return {
          delivery: {
            port: internet.mxPort,
            connectTimeout: '2s',
            commandTimeout: '10s',
            dataTimeout: '20s',
            routes: [
              { domains: ['login.example'], ...route('smtp-login.isp.test', { tls: 'required', auth }) },
              { domains: ['wrongpass.example'], ...route('smtp.isp.test', { tls: 'required', auth: { user: USER, password: 'wrong' } }) },
              { domains: ['clear.example'], ...route('smtp-clear.isp.test', { auth }) },
              { domains: ['clear-ok.example'], ...route('smtp-clear.isp.test', { auth: { ...auth, allowCleartext: true } }) },
              { domains: ['file.example'], ...route('smtp.isp.test', { tls: 'required', auth: { user: USER, passwordFile } }) },
              { domains: ['badcert.example'], ...route('smtp-badcert.isp.test', { tls: 'required' }) },
              { domains: ['partner.test'], ...route('mx.partner.test', {}) },
              // The catch-all comes last: the first route that matches wins.
              { domains: ['*'], ...route('smtp.isp.test', { tls: 'required', auth }) },
            ],
          },
        };
      },
    });
  });
  after(async () => {
    await world.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('delivers through the catch-all route with the credentials, over verified TLS', async () => {
    const smarthost = world.host('smtp.isp.test');
    const sent = await send(world.port, 'alice@example.test', ['bob@gmail.test'], message());
    assert.equal(sent.data?.code, 250, JSON.stringify(sent));
    const received = smarthost.received.at(-1)!;
    assert.equal(received.user, USER);
    assert.equal(received.secure, true);
    assert.deepEqual(received.envelope.rcptTo, ['bob@gmail.test']);
    assert.deepEqual(smarthost.authAttempts.at(-1), { user: USER, method: 'PLAIN', accepted: true, secure: true });
    const record = await world.logs.waitFor((r) => r.msg === 'transaction' && JSON.stringify(r.envelope).includes('bob@gmail.test'));
    const [upstream] = record.upstream as { destination: string; auth?: string; tls: { authorized: boolean }; tlsPolicy: { required?: string[] } }[];
    assert.equal(upstream.auth, USER);
    assert.equal(upstream.tls.authorized, true);
    assert.deepEqual(upstream.tlsPolicy.required, [`route delivery.routes[7] (smtp.isp.test:${world.mxPort})`]);
    assert.doesNotMatch(JSON.stringify(world.logs.records), new RegExp(PASSWORD), 'the password is never logged');
  });

  it('uses AUTH LOGIN when that is all the smarthost offers', async () => {
    const smarthost = world.host('smtp-login.isp.test');
    const sent = await send(world.port, 'alice@example.test', ['carol@login.example'], message({ to: 'carol@login.example' }));
    assert.equal(sent.data?.code, 250, JSON.stringify(sent));
    assert.equal(smarthost.received.at(-1)!.user, USER);
    assert.equal(smarthost.authAttempts.at(-1)!.method, 'LOGIN');
  });

  it('reads the password from passwordFile', async () => {
    const sent = await send(world.port, 'alice@example.test', ['dave@file.example'], message({ to: 'dave@file.example' }));
    assert.equal(sent.data?.code, 250, JSON.stringify(sent));
    assert.equal(world.host('smtp.isp.test').received.at(-1)!.envelope.rcptTo[0], 'dave@file.example');
  });

  it('answers 451 naming the route when the smarthost refuses the credentials, and sends no envelope', async () => {
    const smarthost = world.host('smtp.isp.test');
    const mailFroms = smarthost.mailFroms.length;
    const sent = await send(world.port, 'alice@example.test', ['erin@wrongpass.example'], message({ to: 'erin@wrongpass.example' }));
    assert.equal(sent.rcpts[0].code, 451);
    assert.match(sent.rcpts[0].text, /^4\.7\.0 route delivery\.routes\[1\] \(smtp\.isp\.test:\d+\) at smtp\.isp\.test \[127\.0\.0\.40\] refused AUTH as relay@corp\.example: 535 5\.7\.8 .*fix the user or password of that route/);
    assert.equal(smarthost.mailFroms.length, mailFroms);
    assert.doesNotMatch(sent.rcpts[0].text, /wrong/);
  });

  it('never sends credentials to a smarthost without TLS, unless the route allows it', async () => {
    const smarthost = world.host('smtp-clear.isp.test');
    const refused = await send(world.port, 'alice@example.test', ['frank@clear.example'], message({ to: 'frank@clear.example' }));
    assert.equal(refused.rcpts[0].code, 451);
    assert.match(refused.rcpts[0].text, /^4\.7\.5 route delivery\.routes\[2\] .* gets its credentials only over TLS, and no server provided it; nothing was sent .*does not offer STARTTLS/);
    assert.doesNotMatch(smarthost.wire, /AUTH|MAIL FROM/);
    assert.deepEqual(smarthost.authAttempts, []);

    const allowed = await send(world.port, 'alice@example.test', ['gina@clear-ok.example'], message({ to: 'gina@clear-ok.example' }));
    assert.equal(allowed.data?.code, 250, JSON.stringify(allowed));
    assert.match(smarthost.wire, /AUTH PLAIN /);
    assert.deepEqual(smarthost.authAttempts, [{ user: USER, method: 'PLAIN', accepted: true, secure: false }]);
  });

  it('answers 451 4.7.5 when a route requires TLS and the host certificate is for another name', async () => {
    const host = world.host('smtp-badcert.isp.test');
    const sent = await send(world.port, 'alice@example.test', ['hank@badcert.example'], message({ to: 'hank@badcert.example' }));
    assert.equal(sent.rcpts[0].code, 451);
    assert.match(sent.rcpts[0].text, /^4\.7\.5 route delivery\.routes\[5\] .*certificate of smtp-badcert\.isp\.test not verified \(ERR_TLS_CERT_ALTNAME_INVALID; it names DNS:mail\.elsewhere\.test\)/);
    assert.deepEqual(host.mailFroms, []);
  });

  it('sends a domain with its own route there, not through the catch-all, with opportunistic TLS and no AUTH', async () => {
    const sent = await send(world.port, 'alice@example.test', ['ivy@partner.test'], message({ to: 'ivy@partner.test' }));
    assert.equal(sent.data?.code, 250, JSON.stringify(sent));
    const received = world.host('mx.partner.test').received.at(-1)!;
    assert.equal(received.user, undefined);
    assert.equal(received.secure, true);
  });
});
