/**
 * One header field (RFC 5322 §2.2) as it arrived. A line that is no field (no colon before
 * its end, or a continuation line with no field before it) is kept as an entry with an empty
 * name, so that the section still serializes to the bytes it came from; it matches no name.
 */
export interface HeaderField {
  /** The field name as written, without the whitespace around it; '' for a line that is no field. */
  readonly name: string;
  /** The name lower-cased: what fields are found by (RFC 5322 §1.2.2: names are case-insensitive). */
  readonly key: string;
  /**
   * The field's bytes as latin1 text (one character per byte): from its name to the line end
   * of its last line, folded continuation lines included.
   */
  readonly raw: string;
  /** The value unfolded (RFC 5322 §2.2.3), without the whitespace around it. */
  readonly value: string;
}

const WSP = /^[ \t]/;

function field(raw: string): HeaderField {
  const lineEnd = raw.indexOf('\n');
  const colon = raw.indexOf(':');
  if (colon <= 0 || (lineEnd >= 0 && colon > lineEnd) || WSP.test(raw)) return { name: '', key: '', raw, value: '' };
  const name = raw.slice(0, colon).trim();
  // §2.2.3: unfolding removes the line break before each continuation line.
  return { name, key: name.toLowerCase(), raw, value: raw.slice(colon + 1).replace(/\r?\n[ \t]+/g, ' ').trim() };
}

/**
 * A header section parsed once into its fields, in order. Lines end in CRLF or a bare LF, as
 * `HeaderSplitter` finds the section's end; a bare CR stays inside its line. Changes give a
 * new section; one never changed serializes to exactly the bytes it was parsed from.
 */
export class HeaderSection {
  readonly fields: readonly HeaderField[];
  #bytes?: Buffer;

  private constructor(fields: readonly HeaderField[], bytes?: Buffer) {
    this.fields = fields;
    this.#bytes = bytes;
  }

  /** Parses a header section, up to and including the line end of its last field, as `HeaderSplitter` keeps it. */
  static parse(bytes: Buffer): HeaderSection {
    const text = bytes.toString('latin1');
    const fields: HeaderField[] = [];
    let raw = '';
    for (let start = 0; start < text.length; ) {
      const lf = text.indexOf('\n', start);
      const end = lf < 0 ? text.length : lf + 1;
      const line = text.slice(start, end);
      // §2.2.3: a line starting with WSP continues the field before it.
      if (raw && WSP.test(line)) raw += line;
      else {
        if (raw) fields.push(field(raw));
        raw = line;
      }
      start = end;
    }
    if (raw) fields.push(field(raw));
    return new HeaderSection(fields, bytes);
  }

  /** The section as it leaves: the original bytes when nothing was changed. */
  get bytes(): Buffer {
    this.#bytes ??= Buffer.from(this.text, 'latin1');
    return this.#bytes;
  }

  get text(): string {
    return this.#bytes ? this.#bytes.toString('latin1') : this.fields.map((f) => f.raw).join('');
  }

  /** The fields of a name, in order. */
  all(name: string): HeaderField[] {
    const key = name.toLowerCase();
    return this.fields.filter((f) => f.key === key);
  }

  count(name: string): number {
    return this.all(name).length;
  }

  /** The value of the first field of a name. */
  value(name: string): string | undefined {
    const key = name.toLowerCase();
    return this.fields.find((f) => f.key === key)?.value;
  }

  /** The section without the fields of a name, their continuation lines included. */
  without(name: string): HeaderSection {
    const key = name.toLowerCase();
    const kept = this.fields.filter((f) => f.key !== key);
    return kept.length === this.fields.length ? this : new HeaderSection(kept);
  }

  /** The section with fields appended, each `Name: value` ending in CRLF (after one for a last line that had none). */
  appended(added: readonly (readonly [name: string, value: string])[]): HeaderSection {
    if (added.length === 0) return this;
    const fields = [...this.fields];
    const last = fields.at(-1);
    if (last && !last.raw.endsWith('\n')) fields[fields.length - 1] = field(`${last.raw}\r\n`);
    for (const [name, value] of added) fields.push(field(`${name}: ${value}\r\n`));
    return new HeaderSection(fields);
  }
}

/**
 * Finds where the header section ends (the first empty line, RFC 5322 §2.1) while the
 * message streams in; keeps the header bytes and hands every body byte to `onBody`.
 */
export class HeaderSplitter {
  #held: Buffer = Buffer.alloc(0);
  #header?: Buffer;
  #onBody: (chunk: Buffer) => void;
  #limit: number;

  constructor(onBody: (chunk: Buffer) => void, limit = 1024 * 1024) {
    this.#onBody = onBody;
    this.#limit = limit;
  }

  /** The header section, up to and including the line break of its last field. */
  get header(): Buffer {
    return this.#header ?? this.#held;
  }

  /** The header section grew past the limit without ending. */
  get overflow(): boolean {
    return this.#header === undefined && this.#held.length > this.#limit;
  }

  push(chunk: Buffer): void {
    if (this.#header) {
      this.#onBody(chunk);
      return;
    }
    if (this.overflow) return;
    const from = Math.max(0, this.#held.length - 3);
    this.#held = this.#held.length ? Buffer.concat([this.#held, chunk]) : chunk;
    const end = this.#boundary(from);
    if (end === undefined) return;
    this.#header = this.#held.subarray(0, end.header);
    const body = this.#held.subarray(end.body);
    this.#held = Buffer.alloc(0);
    if (body.length) this.#onBody(body);
  }

  #boundary(from: number): { header: number; body: number } | undefined {
    const held = this.#held;
    // A message that starts with an empty line has no header fields at all.
    if (from === 0 && held[0] === 0x0a) return { header: 0, body: 1 };
    if (from === 0 && held[0] === 0x0d && held[1] === 0x0a) return { header: 0, body: 2 };
    for (let i = held.indexOf(0x0a, from); i >= 0; i = held.indexOf(0x0a, i + 1)) {
      if (held[i + 1] === 0x0a) return { header: i + 1, body: i + 2 };
      if (held[i + 1] === 0x0d && held[i + 2] === 0x0a) return { header: i + 1, body: i + 3 };
    }
    return undefined;
  }
}
