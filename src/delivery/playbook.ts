import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ReplyParser, ReplySyntaxError, type Reply } from '../smtp/index.ts';
import type { Providers } from './providers.ts';

/**
 * The reply playbook (DESIGN §5): which kind of trouble a destination's refusal names, and
 * what an admin does about it. The rules are data, in playbook.yaml beside this file, with an
 * admin's own rows over them (`delivery.playbook`); the relay reads them at start and on
 * SIGHUP. This module is the small engine that applies them.
 */

export const CATEGORIES = ['authentication', 'reputation', 'rate-limit', 'content', 'recipient', 'mailbox-full', 'tls-policy', 'other'] as const;
export type Category = (typeof CATEGORIES)[number];
export type Permanence = 'temporary' | 'permanent';
/** Where in the session a destination gives the reply. */
export const STAGES = ['greeting', 'ehlo', 'mail', 'rcpt', 'data'] as const;
export type Stage = (typeof STAGES)[number];

/** What the playbook says about one refusal. */
export interface Classification {
  category: Category;
  permanence: Permanence;
  remediation: string;
  /** The id of the rule that matched, so an admin can find it in playbook.yaml. */
  rule: string;
  /** The rule's provider, or else the provider the MX host belongs to. */
  provider?: string;
  /** The destination asks the sending IP to stop for a while: the relay pauses that provider. */
  pause: boolean;
}

export interface PlaybookExample {
  at: Stage;
  /** The reply as the destination sends it, lines separated by CRLF (no final CRLF). */
  wire: string;
  reply: Reply;
}

export interface PlaybookRule {
  id: string;
  provider?: string;
  /** The pattern alone does not name the provider: the rule applies only behind its MX hosts. */
  needsMx: boolean;
  pause: boolean;
  /** The reply names a public blocklist's listing of the egress IP or a domain: the relay's standing, not one sender's mail. */
  listing: boolean;
  category: Category;
  permanence: Permanence;
  remediation: string;
  examples: readonly PlaybookExample[];
}

/** A table that cannot be used; the message names every row and field at fault. */
export class PlaybookError extends Error {
  override name = 'PlaybookError';
}

// RFC 3463 §2 class.subject.detail, each part a number, a range (606-649) or '*'. Only
// classes 4 and 5: a playbook explains refusals.
const ENHANCED_PATTERN = /^([45*])\.(\d{1,3}(?:-\d{1,3})?|\*)\.(\d{1,3}(?:-\d{1,3})?|\*)$/;
const ID = /^[a-z0-9][a-z0-9.-]*$/;

const tableSchema = z.strictObject({
  rules: z
    .array(
      z.strictObject({
        id: z.string().regex(ID, 'must be lower-case letters, digits, dots and dashes'),
        provider: z.string().optional(),
        needsMx: z.boolean().default(false),
        pause: z.boolean().default(false),
        listing: z.boolean().default(false),
        code: z.array(z.number().int().min(400).max(599)).min(1).optional(),
        enhanced: z.array(z.string().regex(ENHANCED_PATTERN, 'must look like 5.7.26, 5.7.606-649 or 5.7.*')).min(1).optional(),
        text: z.string().min(1).optional(),
        category: z.enum(CATEGORIES),
        permanence: z.enum(['temporary', 'permanent']),
        remediation: z.string().min(1),
        examples: z.array(z.strictObject({ at: z.enum(STAGES), reply: z.string().min(1) })).min(1, 'every rule needs an example'),
      }),
    )
    .min(1),
});

type RuleSource = z.output<typeof tableSchema>['rules'][number];

/** A row and where it comes from, for messages that name the file and the row. */
interface SourcedRule {
  row: RuleSource;
  where: string;
}

const SHIPPED = new URL('./playbook.yaml', import.meta.url);

interface CompiledRule extends PlaybookRule {
  matches(reply: Reply, text: string): boolean;
  /** No code, enhanced code or text: every reply of its class. */
  catchAll: boolean;
}

/** One part of an enhanced-code pattern as a test on that part of a reply's code. */
function partMatcher(part: string): (value: number) => boolean {
  if (part === '*') return () => true;
  const [low, high = low] = part.split('-').map(Number);
  return (value) => value >= low && value <= high;
}

function enhancedMatcher(pattern: string): (enhanced: string) => boolean {
  const parts = pattern.split('.').map(partMatcher);
  return (enhanced) => enhanced.split('.').every((value, i) => parts[i](Number(value)));
}

/**
 * The text rules are tried on: every line without its repeated `N.N.N` prefix (also one whose
 * class contradicts the reply code, like Gmail's "421 5.7.32"), joined, whitespace collapsed,
 * so that a phrase Gmail wraps across `550-5.7.26` lines still reads as one.
 */
function replyText(reply: Reply): string {
  return reply.lines
    .map((line) => line.replace(/^[245]\.\d{1,3}\.\d{1,3}(?:\s+|$)/, ''))
    .join(' ')
    .replace(/\s+/g, ' ')
    .trim();
}

function permanenceOf(code: number): Permanence {
  return code >= 500 ? 'permanent' : 'temporary';
}

/** An example as one reply, read by the same parser that reads destinations. */
function parseExample(text: string): { wire: string; reply: Reply } {
  const wire = text.replace(/\r?\n/g, '\r\n');
  const parser = new ReplyParser();
  const replies = parser.push(Buffer.from(`${wire}\r\n`));
  if (replies.length !== 1 || parser.pending) throw new ReplySyntaxError(`holds ${replies.length} complete replies, not one`);
  return { wire, reply: replies[0] };
}

/** Compiles one validated row; problems with it are pushed to `problems`. */
function compileRule(source: RuleSource, where: string, problems: string[]): CompiledRule {
  const digit = source.permanence === 'permanent' ? 5 : 4;
  for (const code of source.code ?? []) {
    if (Math.floor(code / 100) !== digit) problems.push(`${where}.code: ${code} is not ${source.permanence} (a ${digit}xx code)`);
  }
  for (const pattern of source.enhanced ?? []) {
    const [cls, ...rest] = pattern.split('.');
    if (cls !== '*' && Number(cls) !== digit) problems.push(`${where}.enhanced: ${pattern} is not ${source.permanence} (class ${digit})`);
    for (const part of rest) {
      const [low, high] = part.split('-').map(Number);
      if (high !== undefined && high < low) problems.push(`${where}.enhanced: ${pattern} has an empty range`);
    }
  }
  let text: RegExp | undefined;
  if (source.text !== undefined) {
    try {
      text = new RegExp(source.text, 'i');
    } catch (err) {
      problems.push(`${where}.text: ${(err as Error).message}`);
    }
  }
  const enhanced = source.enhanced?.map(enhancedMatcher);
  const examples: PlaybookExample[] = [];
  source.examples.forEach((example, i) => {
    try {
      examples.push({ at: example.at, ...parseExample(example.reply) });
    } catch (err) {
      problems.push(`${where}.examples[${i}]: not an SMTP reply: ${(err as Error).message}`);
    }
  });
  return {
    id: source.id,
    ...(source.provider ? { provider: source.provider } : {}),
    needsMx: source.needsMx,
    pause: source.pause,
    listing: source.listing,
    category: source.category,
    permanence: source.permanence,
    remediation: source.remediation.replace(/\s+/g, ' ').trim(),
    examples,
    catchAll: !source.code && !source.enhanced && source.text === undefined,
    matches: (reply, replyText) =>
      permanenceOf(reply.code) === source.permanence &&
      (!source.code || source.code.includes(reply.code)) &&
      (!enhanced || (reply.enhanced !== undefined && enhanced.some((test) => test(reply.enhanced!)))) &&
      (!text || text.test(replyText)),
  };
}

function issuePath(path: ReadonlyArray<PropertyKey>, rules: unknown): string {
  const [first, index, ...rest] = path;
  const id = first === 'rules' && typeof index === 'number' && Array.isArray(rules) ? (rules[index] as { id?: unknown } | undefined)?.id : undefined;
  let out = first === undefined ? '(top level)' : String(first);
  if (index !== undefined) out += typeof index === 'number' ? `[${index}]${typeof id === 'string' ? ` (${id})` : ''}` : `.${String(index)}`;
  for (const part of rest) out += typeof part === 'number' ? `[${part}]` : `.${String(part)}`;
  return out;
}

/** Reads one table file's rows, each named by the file and its index there. */
function readTable(text: string, source: string): SourcedRule[] {
  let document: unknown;
  try {
    document = parseYaml(text, { prettyErrors: false });
  } catch (err) {
    throw new PlaybookError(`${source}: not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  const parsed = tableSchema.safeParse(document);
  if (!parsed.success) {
    const rules = (document as { rules?: unknown } | null)?.rules;
    throw new PlaybookError(`${source}: ${parsed.error.issues.map((issue) => `${issuePath(issue.path, rules)}: ${issue.message}`).join('; ')}`);
  }
  return parsed.data.rules.map((row, i) => ({ row, where: `${source}: rules[${i}] (${row.id})` }));
}

export class Playbook {
  readonly rules: readonly PlaybookRule[];
  readonly providers: Providers;
  readonly #rules: CompiledRule[];

  private constructor(rules: CompiledRule[], providers: Providers) {
    this.#rules = rules;
    this.rules = rules;
    this.providers = providers;
  }

  /** Reads a whole table; anything wrong with it, every problem named, throws a PlaybookError. */
  static parse(text: string, providers: Providers, source = 'playbook'): Playbook {
    return Playbook.#build(readTable(text, source), providers);
  }

  /**
   * The shipped table, with an admin's rows from `overlay` over it: a row whose id is a
   * shipped row's replaces it where it stands; the others come first, in the overlay's
   * order, so they win over the shipped rows. Checked like the shipped table.
   */
  static load(providers: Providers, overlay?: string): Playbook {
    const shipped = readTable(readFileSync(SHIPPED, 'utf8'), SHIPPED.pathname);
    if (overlay === undefined) return Playbook.#build(shipped, providers);
    let text: string;
    try {
      text = readFileSync(overlay, 'utf8');
    } catch (err) {
      throw new PlaybookError(`${overlay}: cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    const own = readTable(text, overlay);
    const replacing = new Map(own.map((rule) => [rule.row.id, rule]));
    const merged = shipped.map((rule) => replacing.get(rule.row.id) ?? rule);
    const added = own.filter((rule) => !shipped.some((s) => s.row.id === rule.row.id));
    return Playbook.#build([...added, ...merged], providers);
  }

  static #build(table: SourcedRule[], providers: Providers): Playbook {
    const problems: string[] = [];
    const ids = new Set<string>();
    const rules = table.map(({ row, where }) => {
      if (ids.has(row.id)) problems.push(`${where}.id: duplicate id "${row.id}"`);
      ids.add(row.id);
      if (row.provider !== undefined && !providers.has(row.provider)) problems.push(`${where}.provider: "${row.provider}" is not listed in the provider registry (providers.yaml and delivery.providers)`);
      if (row.needsMx && row.provider === undefined) problems.push(`${where}.needsMx: only a provider's rule can need its MX`);
      return compileRule(row, where, problems);
    });
    const where = (i: number) => table[i].where;
    for (const permanence of ['temporary', 'permanent'] as const) {
      const last = rules.findIndex((rule) => rule.catchAll && rule.permanence === permanence);
      if (last === -1) problems.push(`rules: no rule without code, enhanced and text for ${permanence} replies, so some would go unclassified (end with an "other" rule)`);
      for (const [i, rule] of rules.entries()) {
        if (last !== -1 && i > last && rule.permanence === permanence && rule.provider === undefined) {
          problems.push(`${where(i)}: never reached, rule ${rules[last].id} before it matches every ${permanence} reply`);
        }
      }
      if (last !== -1 && rules[last].provider !== undefined) problems.push(`${where(last)}: a catch-all rule cannot belong to a provider`);
    }
    if (problems.length) throw new PlaybookError(problems.join('; '));

    const playbook = new Playbook(rules, providers);
    // Every example must be explained by its own row, so the table cannot silently contradict
    // itself: a row placed after a broader one, or a pattern that misses its own example.
    for (const [i, rule] of rules.entries()) {
      const mxHost = rule.provider ? providers.entries.find((p) => p.name === rule.provider)!.mx[0] : undefined;
      rule.examples.forEach((example, j) => {
        const at = `${where(i)}.examples[${j}]`;
        const behindMx = playbook.classify(example.reply, { mxHost });
        if (behindMx?.rule !== rule.id) problems.push(`${at}: classified by ${behindMx?.rule ?? 'nothing'}${mxHost ? ` behind MX ${mxHost}` : ''}, not by its own rule`);
        const alone = playbook.classify(example.reply);
        if (!rule.needsMx && alone?.rule !== rule.id) problems.push(`${at}: without an MX host classified by ${alone?.rule ?? 'nothing'}, not by its own rule`);
        if (rule.needsMx && (alone?.category !== rule.category || alone.permanence !== rule.permanence)) {
          problems.push(`${at}: without an MX host classified as ${alone?.category} ${alone?.permanence} (${alone?.rule}); a needsMx rule's examples must fall back to the same category`);
        }
      });
    }
    if (problems.length) throw new PlaybookError(problems.join('; '));
    return playbook;
  }

  /**
   * The playbook's reading of a destination's 4xx/5xx reply; undefined for any other code.
   * Behind a known provider's MX, its rules come first and other providers' are skipped (their
   * remediations would send the admin to the wrong support page); elsewhere a provider's rule
   * applies when its pattern names the provider by itself. Generic rules come last.
   */
  classify(reply: Reply, options: { mxHost?: string } = {}): Classification | undefined {
    if (reply.code < 400 || reply.code > 599) return undefined;
    const mxProvider = options.mxHost ? this.providers.of([options.mxHost])?.name : undefined;
    const text = replyText(reply);
    const generic = this.#rules.filter((rule) => rule.provider === undefined);
    const specific = this.#rules.filter((rule) => (mxProvider ? rule.provider === mxProvider : rule.provider !== undefined && !rule.needsMx));
    const rule = [...specific, ...generic].find((candidate) => candidate.matches(reply, text));
    if (!rule) return undefined;
    const provider = rule.provider ?? mxProvider;
    return { category: rule.category, permanence: rule.permanence, remediation: rule.remediation, rule: rule.id, pause: rule.pause, ...(provider ? { provider } : {}) };
  }
}
