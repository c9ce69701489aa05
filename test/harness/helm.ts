/**
 * Renders a Helm chart without a helm binary: Go's text/template as ported to TypeScript by
 * @mdfriday/text-template (Go's lexer, parser and executor: actions, pipelines, variables,
 * define/template, whitespace trimming, Go's error messages), with Helm's rendering around it
 * (every template of templates/ in one set, named CHART/templates/FILE; files starting with _
 * only define; missingkey=zero with "<no value>" removed; NOTES.txt apart) and the Helm/Sprig
 * functions the chart uses, written here after Helm's and Sprig's sources. A function the chart
 * uses that is not here is a parse error ("function … not defined"), as with helm.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { New } from '@mdfriday/text-template';
import YAML from 'yaml';

type Dict = Record<string, unknown>;

const isDict = (v: unknown): v is Dict => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Helm's coalesce: user values over the chart's, maps merged deeply, null deletes. */
export function mergeValues(base: Dict, over: Dict): Dict {
  const out: Dict = structuredClone(base);
  for (const [k, v] of Object.entries(over)) {
    if (v === null) delete out[k];
    else if (isDict(v) && isDict(out[k])) out[k] = mergeValues(out[k] as Dict, v);
    else out[k] = structuredClone(v);
  }
  return out;
}

/** Go template truth (Sprig's `empty` is its negation). */
function truthy(v: unknown): boolean {
  if (v === undefined || v === null || v === false || v === 0 || v === '') return false;
  if (Array.isArray(v)) return v.length > 0;
  if (isDict(v)) return Object.keys(v).length > 0;
  return true;
}

const toStr = (v: unknown): string => (v === undefined || v === null ? '' : typeof v === 'string' ? v : isDict(v) || Array.isArray(v) ? JSON.stringify(v) : String(v));

/** Helm's toYaml: sigs.k8s.io/yaml (keys sorted), the final newline trimmed. */
function toYaml(v: unknown): string {
  if (v === undefined || v === null) return 'null';
  return YAML.stringify(v, { sortMapEntries: true, lineWidth: 0, aliasDuplicateObjects: false }).replace(/\n$/, '');
}

const indent = (n: number, s: unknown) => toStr(s).split('\n').map((l) => ' '.repeat(n) + l).join('\n');

export interface Rendered {
  /** File name → rendered text (templates that render to nothing are left out). */
  files: Map<string, string>;
  /** Every YAML document of every manifest, parsed. */
  objects: Dict[];
  notes: string;
}

export interface RenderOptions {
  releaseName?: string;
  namespace?: string;
  /** Values over values.yaml (as `helm install -f`). */
  values?: Dict;
}

export async function renderChart(chartDir: string, options: RenderOptions = {}): Promise<Rendered> {
  const chart = YAML.parse(readFileSync(join(chartDir, 'Chart.yaml'), 'utf8')) as Dict;
  const defaults = (YAML.parse(readFileSync(join(chartDir, 'values.yaml'), 'utf8')) ?? {}) as Dict;
  const values = mergeValues(defaults, options.values ?? {});
  const chartName = String(chart.name);
  const base = `${chartName}/templates`;
  const root = New(chartName).Option('missingkey=zero');
  const execute = async (name: string, data: unknown): Promise<string> => {
    const [text, err] = await root.ExecuteTemplate(name, data);
    if (err) throw err;
    return text.replaceAll('<no value>', '');
  };
  const funcs: Record<string, (...args: any[]) => unknown> = {
    include: (name: string, data: unknown) => execute(name, data),
    // Helm's: only nil and "" fail (an empty list or map passes).
    required: (message: string, v: unknown) => {
      if (v === undefined || v === null || v === '') throw new Error(message);
      return v;
    },
    fail: (message: string) => {
      throw new Error(message);
    },
    toYaml,
    fromYaml: (s: string) => {
      try {
        const v = YAML.parse(s);
        return isDict(v) ? v : {};
      } catch (err) {
        return { Error: (err as Error).message };
      }
    },
    toString: toStr,
    nindent: (n: number, s: unknown) => '\n' + indent(n, s),
    indent,
    quote: (...a: unknown[]) => a.filter((x) => x !== undefined && x !== null).map((x) => JSON.stringify(toStr(x))).join(' '),
    default: (d: unknown, ...given: unknown[]) => (given.length && truthy(given[0]) ? given[0] : d),
    empty: (v: unknown) => !truthy(v),
    sha256sum: (s: string) => createHash('sha256').update(toStr(s)).digest('hex'),
    trunc: (n: number, s: string) => (n >= 0 ? toStr(s).slice(0, n) : toStr(s).slice(n)),
    trimSuffix: (suffix: string, s: string) => (toStr(s).endsWith(suffix) ? toStr(s).slice(0, -suffix.length) : toStr(s)),
    replace: (from: string, to: string, s: string) => toStr(s).replaceAll(from, to),
    contains: (sub: string, s: string) => toStr(s).includes(sub),
    print: (...a: unknown[]) => a.map(toStr).join(''),
    join: (sep: string, list: unknown[]) => (list ?? []).map(toStr).join(sep),
    splitList: (sep: string, s: string) => toStr(s).split(sep),
    list: (...a: unknown[]) => a,
    has: (needle: unknown, list: unknown[]) => (list ?? []).some((x) => x === needle),
    dict: (...a: unknown[]) => {
      const d: Dict = {};
      for (let i = 0; i < a.length; i += 2) d[toStr(a[i])] = a[i + 1];
      return d;
    },
    set: (d: Dict, k: string, v: unknown) => {
      d[k] = v;
      return d;
    },
    hasKey: (d: Dict, k: string) => isDict(d) && Object.hasOwn(d, k),
    deepCopy: (v: unknown) => structuredClone(v ?? {}),
    int: (v: unknown) => {
      const n = typeof v === 'number' ? v : Number.parseInt(toStr(v), 10);
      return Number.isFinite(n) ? Math.trunc(n) : 0;
    },
    add: (...a: unknown[]) => a.reduce<number>((s, x) => s + Math.trunc(Number(x) || 0), 0),
  };
  root.Funcs(new Map(Object.entries(funcs)));
  const dir = join(chartDir, 'templates');
  const names = readdirSync(dir).filter((f) => /\.(ya?ml|tpl|txt)$/.test(f)).sort();
  for (const file of names) {
    const [, err] = root.New(`${base}/${file}`).Parse(readFileSync(join(dir, file), 'utf8'));
    if (err) throw err;
  }
  const top = {
    Values: values,
    Release: { Name: options.releaseName ?? 'mail', Namespace: options.namespace ?? 'default', Service: 'Helm', IsInstall: true, IsUpgrade: false, Revision: 1 },
    Chart: { Name: chartName, Version: chart.version, AppVersion: chart.appVersion, ...chart },
    Capabilities: { KubeVersion: { Version: 'v1.30.0', Major: '1', Minor: '30' } },
  };
  const files = new Map<string, string>();
  const objects: Dict[] = [];
  let notes = '';
  for (const file of names) {
    if (file.startsWith('_')) continue;
    const name = `${base}/${file}`;
    const text = await execute(name, { ...top, Template: { Name: name, BasePath: base } });
    if (file === 'NOTES.txt') {
      notes = text;
      continue;
    }
    if (!text.trim()) continue;
    files.set(file, text);
    for (const doc of YAML.parseAllDocuments(text)) {
      if (doc.errors.length) throw new Error(`${file}: ${doc.errors[0]!.message}\n${text}`);
      const obj = doc.toJS();
      if (obj !== null && obj !== undefined) objects.push(obj as Dict);
    }
  }
  return { files, objects, notes };
}

/** Every `.Values.a.b` path a template refers to (the chart's own syntax; `$.Values` too). */
export function valuePaths(chartDir: string): Map<string, string> {
  const found = new Map<string, string>();
  const dir = join(chartDir, 'templates');
  for (const file of readdirSync(dir)) {
    const text = readFileSync(join(dir, file), 'utf8');
    for (const m of text.matchAll(/\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)/g)) found.set(m[1]!.slice(1), file);
  }
  return found;
}
