import { existsSync, readFileSync, writeFileSync } from 'node:fs';

/**
 * The sections of bench/RESULTS.md that commands other than `npm run bench` write: each
 * command owns one "## " heading and rewrites only that section (up to the next "## "
 * heading or a marker of `npm run bench`), so the bench's run and the others' stay.
 */

const BENCH_BEGIN = '<!-- npm run bench:';

export const fmt = (n: number, digits = 0): string => n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
export const mb = (bytes: number, digits = 1): string => `${fmt(bytes / 1024 / 1024, digits)} MB`;

export function table(head: string[], rows: string[][]): string {
  const row = (cells: string[]): string => `| ${cells.join(' | ')} |`;
  return [row(head), row(head.map(() => '---')), ...rows.map(row)].join('\n');
}

/**
 * Replaces the section headed `heading` ("## Memory") with `body` (which starts with that
 * heading). A new section goes before the bench's run when `first`, else at the end.
 */
export function writeSection(file: string, heading: string, body: string, first = false): void {
  const old = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmark results\n';
  const lines = old.split('\n');
  const start = lines.findIndex((line) => line === heading);
  const section = body.trimEnd().split('\n');
  if (start >= 0) {
    let end = start + 1;
    while (end < lines.length && !lines[end].startsWith('## ') && !lines[end].startsWith('<!-- ')) end++;
    lines.splice(start, end - start, ...section, '');
  } else if (first) {
    const at = lines.findIndex((line) => line.startsWith(BENCH_BEGIN));
    lines.splice(at >= 0 ? at : lines.length, 0, ...section, '');
  } else {
    if (lines.at(-1) === '') lines.pop();
    lines.push('', ...section, '');
  }
  writeFileSync(file, lines.join('\n'));
}
