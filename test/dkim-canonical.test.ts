import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { dkimBody } from 'mailauth/lib/dkim/body/index.js';
import { RelaxedBodyHash } from '../src/auth/index.ts';
import { relaxedHeader } from '../src/auth/dkim/canonical.ts';

/** A deterministic pseudo-random generator, so a failing case can be replayed. */
function random(seed: number) {
  return () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
}

const PIECES = ['a', 'Zz', ' ', '\t', '  \t ', '\r\n', '\r\n\r\n', '.', 'é', 'line', '\t\r\n', ' \r\n'];

describe('relaxed canonicalization', () => {
  it('hashes bodies exactly as mailauth does, however the body is cut into chunks', () => {
    const next = random(42);
    for (let round = 0; round < 500; round++) {
      let body = '';
      const parts = Math.floor(next() * 40);
      for (let i = 0; i < parts; i++) body += PIECES[Math.floor(next() * PIECES.length)];
      const bytes = Buffer.from(body, 'latin1');
      const reference = dkimBody('relaxed', 'sha256', false);
      reference.update(bytes);
      const ours = new RelaxedBodyHash();
      for (let at = 0; at < bytes.length; ) {
        const size = 1 + Math.floor(next() * 5);
        ours.update(bytes.subarray(at, at + size));
        at += size;
      }
      assert.equal(ours.digest(), reference.digest('base64'), JSON.stringify(body));
    }
  });

  it('reads bare LF and bare CR as line ends, as the upstream session sends them', () => {
    const hash = (text: string) => {
      const h = new RelaxedBodyHash();
      h.update(Buffer.from(text));
      return h.digest();
    };
    assert.equal(hash('one\ntwo\n'), hash('one\r\ntwo\r\n'));
    assert.equal(hash('one\rtwo\r'), hash('one\r\ntwo\r\n'));
    assert.equal(hash(''), hash('\r\n\r\n'), 'an empty body and one of empty lines hash the same (RFC 6376 §3.4.4)');
  });

  it('canonicalizes header fields by RFC 6376 §3.4.2', () => {
    assert.equal(relaxedHeader('SubJect :  Hello \t  world  \r\n\t again  '), 'subject:Hello world again');
    assert.equal(relaxedHeader('X-Latin1: caf\xe9\xa0'), 'x-latin1:caf\xe9\xa0', 'only SP and HTAB count as whitespace');
  });
});
