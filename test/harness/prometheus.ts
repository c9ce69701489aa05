import { execFile } from 'node:child_process';

/** One sample as the exposition carries it: `name` with its suffix (`_count`, `_bucket` …). */
export interface Sample {
  family: string;
  type: string;
  name: string;
  labels: Record<string, string>;
  value: number;
}

// The Prometheus project's own Python client parses the text format (Debian's
// python3-prometheus-client, installed by scripts/system-deps.sh): a parser nobody here wrote.
const PARSER = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        # NaN and infinities are valid sample values but not JSON: sent as text.
        out.append({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": repr(float(s.value))})
print(json.dumps(out))
`;

/** Parses a /metrics body; rejects when it is not valid exposition format. */
export function parseExposition(text: string): Promise<Sample[]> {
  return new Promise((resolve, reject) => {
    const child = execFile('/usr/bin/python3', ['-c', PARSER], { maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`not valid Prometheus exposition: ${stderr || err.message}`));
      const samples = JSON.parse(stdout) as (Omit<Sample, 'value'> & { value: string })[];
      resolve(samples.map((s) => ({ ...s, value: s.value === 'inf' ? Infinity : s.value === '-inf' ? -Infinity : Number(s.value) })));
    });
    child.stdin!.end(text);
  });
}
