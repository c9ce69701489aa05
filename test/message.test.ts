import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HeaderSection, HeaderSplitter, LineEnds } from '../src/message/index.ts';

const latin1 = (text: string) => Buffer.from(text, 'latin1');
const parse = (text: string) => HeaderSection.parse(latin1(text));

describe('header section (RFC 5322 §2.2)', () => {
  it('serializes to exactly the bytes it was parsed from', () => {
    const sections = [
      'From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n',
      'From: a@example.org\nSubject: bare LF\n',
      'Subject: folded\r\n\tover\r\n  two lines\r\nX-Eight: caf\xe9 \xa0\r\n',
      'no colon here\r\n continued junk\r\nSubject: after junk\r\n',
      ' leading continuation\r\nSubject: x',
      'Subject: bare CR\rstays inside\r\n',
      'Subject: trailing space   \r\n',
      '',
    ];
    for (const text of sections) {
      const section = parse(text);
      assert.equal(section.text, text);
      assert.equal(section.bytes.toString('latin1'), text);
      assert.equal(section.fields.map((f) => f.raw).join(''), text, 'every byte belongs to one entry');
    }
  });

  it('keeps a parsed section’s own buffer when nothing changed', () => {
    const bytes = latin1('Subject: x\r\nFrom: a@example.org\r\n');
    const section = HeaderSection.parse(bytes);
    assert.equal(section.bytes, bytes);
    assert.equal(section.without('received'), section);
    assert.equal(section.appended([]), section);
  });

  it('reads folded fields with their continuation lines and unfolds the value (§2.2.3)', () => {
    const section = parse('Subject: one\r\n\ttwo\r\n   three \r\nTo: b@example.net\r\n');
    assert.deepEqual(
      section.fields.map((f) => [f.name, f.key, f.raw, f.value]),
      [
        ['Subject', 'subject', 'Subject: one\r\n\ttwo\r\n   three \r\n', 'one two three'],
        ['To', 'to', 'To: b@example.net\r\n', 'b@example.net'],
      ],
    );
  });

  it('reads bare LF line ends like CRLF', () => {
    const section = parse('From: a@example.org\nSubject: a\n b\n');
    assert.equal(section.value('subject'), 'a b');
    assert.equal(section.fields[1].raw, 'Subject: a\n b\n');
  });

  it('finds fields by name case-insensitively, with whitespace before the colon (obsolete syntax, §4.5)', () => {
    const section = parse('FROM : a@example.org\r\nReceived: one\r\nreceived: two\r\nDKIM-Signature: x\r\n');
    assert.equal(section.value('From'), 'a@example.org');
    assert.equal(section.count('received'), 2);
    assert.deepEqual(
      section.all('Received').map((f) => f.value),
      ['one', 'two'],
    );
    assert.equal(section.count('dkim-signature'), 1);
    assert.equal(section.value('date'), undefined);
  });

  it('keeps a line without a colon, and a continuation with no field before it, as entries that match no name', () => {
    const section = parse(' Subject: not a field\r\nSubject junk\r\n\tmore junk: x\r\n: empty name\r\nSubject: real\r\n');
    assert.deepEqual(
      section.fields.map((f) => f.key),
      ['', '', '', 'subject'],
    );
    assert.equal(section.value('subject'), 'real');
    assert.equal(section.count('subject'), 1);
  });

  it('parses an empty header section into no fields', () => {
    const section = parse('');
    assert.deepEqual(section.fields, []);
    assert.equal(section.value('from'), undefined);
    assert.equal(section.appended([['Date', 'today']]).text, 'Date: today\r\n');
  });

  it('removes fields with their continuation lines and nothing else', () => {
    const section = parse('Received: from a\r\n\tby b\r\nSubject: x\r\njunk line\r\nreceived: c\nTo: d\r\n');
    assert.equal(section.without('Received').text, 'Subject: x\r\njunk line\r\nTo: d\r\n');
  });

  it('appends fields ending in CRLF, ending a last line that had no line end first', () => {
    const added = [['Date', 'Thu, 1 Jan 2026 00:00:00 +0000'], ['Message-ID', '<x@y>']] as const;
    assert.equal(parse('Subject: x\n').appended(added).text, 'Subject: x\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <x@y>\r\n');
    const unended = parse('Subject: x').appended(added);
    assert.equal(unended.text, 'Subject: x\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <x@y>\r\n');
    assert.equal(unended.value('message-id'), '<x@y>');
    assert.equal(unended.bytes.toString('latin1'), unended.text);
  });

  it('gives the splitter’s header section, however the message is cut into chunks', () => {
    const message = latin1('Subject: x\r\n\tfolded\r\nFrom: a@example.org\r\n\r\nbody\r\n');
    for (let size = 1; size <= message.length; size++) {
      const body: Buffer[] = [];
      const splitter = new HeaderSplitter((chunk) => body.push(chunk));
      for (let at = 0; at < message.length; at += size) splitter.push(message.subarray(at, at + size));
      const section = HeaderSection.parse(splitter.header);
      assert.equal(section.text, 'Subject: x\r\n\tfolded\r\nFrom: a@example.org\r\n');
      assert.equal(Buffer.concat(body).toString('latin1'), 'body\r\n');
    }
  });
});

describe('line ends (RFC 5322 §2.1, RFC 5321 §2.3.8)', () => {
  const reference = (text: string) => text.replace(/\r\n|\r|\n/g, '\r\n');

  it('writes CRLF, bare LF and bare CR each as one CRLF, however the input is cut', () => {
    const texts = ['a\r\nb\nc\rd\r\r\n\n\re', '\r', '\n', '\r\n', 'x\r', '\r\r\r', '\n\n\r\n\r', 'no line end', ''];
    for (const text of texts) {
      for (let size = 1; size <= Math.max(1, text.length); size++) {
        const lines = new LineEnds();
        const out: Buffer[] = [];
        for (let at = 0; at < text.length; at += size) out.push(lines.push(latin1(text.slice(at, at + size))));
        out.push(lines.end());
        assert.equal(Buffer.concat(out).toString('latin1'), reference(text), `${JSON.stringify(text)} in chunks of ${size}`);
      }
    }
  });

  it('hands back the chunk itself when every line already ends in CRLF', () => {
    const lines = new LineEnds();
    const chunk = latin1('one\r\ntwo\r\n8-bit \xe9\r\n');
    assert.equal(lines.push(chunk), chunk);
    const split = latin1('three\r');
    assert.equal(lines.push(split), split);
    const rest = latin1('\nfour');
    assert.equal(lines.push(rest), rest);
    assert.equal(lines.end().length, 0);
  });
});
