/**
 * The Helm chart (helm/hygiene-relay), checked without a helm binary or an API server (none can
 * be had here): rendered with Go's text/template as ported by @mdfriday/text-template and the
 * Helm/Sprig functions of test/harness/helm.ts; every object validated against the Kubernetes
 * OpenAPI schemas (kubernetes-models, the prometheus-operator CRD schemas for the
 * ServiceMonitor); every `.Values.x.y` of a template present in values.yaml; values.yaml and the
 * full example validated against values.schema.json (ajv, draft-07 as helm uses); the rendered
 * relay configuration (ConfigMap + Secret, joined as the container joins them, its files where
 * the Secret mounts them) passed to the relay's own `config check`. Broken fixtures must fail.
 */
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { generateKeyPairSync } from 'node:crypto';
import { Ajv } from 'ajv';
import YAML from 'yaml';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { renderChart, valuePaths, type Rendered } from './harness/helm.ts';
import { DnsServer } from './harness/dns-server.ts';
import { testCertificate } from './harness/tls.ts';
import { runCli } from './harness/process.ts';

const CHART = path.resolve(import.meta.dirname, '../helm/hygiene-relay');
const FIXTURES = path.resolve(import.meta.dirname, 'fixtures/helm');
type Dict = Record<string, any>;

const MODELS: Record<string, new (data: any) => { validate(): void }> = {
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
};

/** Schema errors of every rendered object, one line each ("" = all valid). */
function kubernetesErrors(objects: Record<string, unknown>[]): string[] {
  const errors: string[] = [];
  for (const obj of objects as Dict[]) {
    const Model = MODELS[`${obj.apiVersion}/${obj.kind}`];
    if (!Model) {
      errors.push(`${obj.apiVersion}/${obj.kind}: no schema for this kind`);
      continue;
    }
    try {
      new Model(obj).validate();
    } catch (err) {
      errors.push(`${obj.kind} ${obj.metadata?.name}: ${(err as Error).message}`);
    }
  }
  return errors;
}

const ajv = new Ajv({ allErrors: true, strict: false });
const validateValues = ajv.compile(JSON.parse(readFileSync(path.join(CHART, 'values.schema.json'), 'utf8')));
const chartValues = YAML.parse(readFileSync(path.join(CHART, 'values.yaml'), 'utf8')) as Dict;
const fixture = (name: string) => YAML.parse(readFileSync(path.join(FIXTURES, name), 'utf8')) as Dict;

function find(r: Rendered, kind: string, suffix = ''): Dict {
  const obj = (r.objects as Dict[]).find((o) => o.kind === kind && o.metadata.name === `mail-hygiene-relay${suffix}`);
  assert.ok(obj, `no ${kind}${suffix}`);
  return obj;
}

/** The relay.yaml the container assembles, with the pod's paths moved to `dir` and its files written there. */
function assembled(r: Rendered, dir: string): string {
  const configMap = find(r, 'ConfigMap');
  const secret = find(r, 'Secret');
  const mounts: Record<string, string> = {
    '/etc/hygiene-relay/secret/': path.join(dir, 'secret') + '/',
    '/var/lib/hygiene-relay': path.join(dir, 'state'),
    '/run/hygiene-relay': path.join(dir, 'run'),
  };
  for (const sub of ['secret', 'state', 'run']) mkdirSync(path.join(dir, sub), { recursive: true });
  for (const [file, text] of Object.entries(secret.stringData as Record<string, string>)) {
    writeFileSync(path.join(dir, 'secret', file), text, { mode: 0o600 });
  }
  // `cat relay.yaml secret.yaml` as the container's command does.
  let text = configMap.data['relay.yaml'] + secret.stringData['secret.yaml'];
  for (const [from, to] of Object.entries(mounts)) text = text.replaceAll(from, to);
  return text;
}

describe('helm chart', () => {
  let dns: DnsServer;
  let work: string;
  let extras: Dict;

  before(async () => {
    dns = await DnsServer.start();
    dns.addPtr('203.0.113.10', 'relay.example.com', { forward: true });
    work = mkdtempSync(path.join(os.tmpdir(), 'helm-test-'));
    const cert = await testCertificate(['relay.example.com']);
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    extras = {
      secrets: { dkimKeys: { 'example.com.s2026.pem': privateKey.export({ type: 'pkcs8', format: 'pem' }) }, tls: { crt: cert.cert, key: cert.key } },
    };
  });
  after(async () => {
    await dns.close();
    rmSync(work, { recursive: true, force: true });
  });

  it('every .Values path a template uses is in values.yaml', () => {
    const missing = missingValuePaths(CHART, chartValues);
    assert.deepEqual(missing, []);
  });

  it('values.yaml and the full example validate against values.schema.json; the broken values do not', () => {
    assert.ok(validateValues(chartValues), ajv.errorsText(validateValues.errors));
    const { merged } = withFixture('full-values.yaml');
    assert.ok(validateValues(merged), ajv.errorsText(validateValues.errors));
    const broken = mergeDeep(chartValues, fixture('broken-values.yaml'));
    assert.equal(validateValues(broken), false);
    const text = ajv.errorsText(validateValues.errors);
    for (const where of ['/service/port', '/shutdownTimeoutSeconds', '/redis/sentinel/nodes']) assert.match(text, new RegExp(where), text);
  });

  for (const [label, file] of [['default values', null], ['the full example', 'full-values.yaml']] as const) {
    it(`renders with ${label}: valid Kubernetes objects, and the relay's config check passes`, async () => {
      const over = file ? mergeDeep(fixture(file), extras) : {};
      // As `--set config.dns.servers={…}`: the egress identity is looked up in the test's DNS.
      const values = mergeDeep(over, { config: { dns: { servers: [dns.address], timeout: '1s', tries: 1 } } });
      const r = await renderChart(CHART, { releaseName: 'mail', namespace: 'mail', values });
      assert.deepEqual(kubernetesErrors(r.objects), []);
      const kinds = r.objects.map((o) => o.kind).sort();
      assert.deepEqual(kinds, file
        ? ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'PodDisruptionBudget', 'Secret', 'Service', 'Service', 'ServiceMonitor']
        : ['ConfigMap', 'Deployment', 'PodDisruptionBudget', 'Secret', 'Service', 'Service']);

      const deployment = find(r, 'Deployment');
      const pod = deployment.spec.template.spec;
      const container = pod.containers[0];
      const seconds = (values.shutdownTimeoutSeconds ?? chartValues.shutdownTimeoutSeconds) as number;
      assert.ok(pod.terminationGracePeriodSeconds > seconds, 'grace period longer than the drain');
      assert.equal(pod.securityContext.runAsNonRoot, true);
      assert.equal(pod.securityContext.runAsUser, 1000);
      assert.equal(container.securityContext.readOnlyRootFilesystem, true);
      assert.equal(container.securityContext.allowPrivilegeEscalation, false);
      assert.deepEqual(container.securityContext.capabilities.drop, ['ALL']);
      assert.equal(container.livenessProbe.httpGet.path, '/healthz');
      assert.equal(container.readinessProbe.httpGet.path, '/readyz');
      assert.deepEqual(container.volumeMounts.filter((m: Dict) => !m.readOnly).map((m: Dict) => m.mountPath).sort(), ['/run/hygiene-relay', '/tmp', '/var/lib/hygiene-relay']);
      assert.match(deployment.spec.template.metadata.annotations['checksum/config'], /^[0-9a-f]{64}$/);
      assert.equal(deployment.spec.replicas, file ? undefined : 2, 'replicas are the HPA\'s when autoscaling');

      const config = YAML.parse(find(r, 'ConfigMap').data['relay.yaml']) as Dict;
      assert.equal(config.shutdownTimeout, `${seconds}s`);
      assert.equal(config.clients, undefined, 'clients (AUTH hashes) are only in the Secret');
      if (file) {
        assert.equal(find(r, 'Service').spec.externalTrafficPolicy, 'Cluster');
        assert.equal(config.dns, undefined, 'Redis with a password: the Redis-bearing sections are in the Secret');
        const secretConfig = YAML.parse(find(r, 'Secret').stringData['secret.yaml']) as Dict;
        assert.equal(secretConfig.clients.users[0].name, 'exchange');
        assert.deepEqual(secretConfig.memo.redis, { sentinels: ['10.0.0.5:26379', '10.0.0.6:26379', '10.0.0.7:26379'], name: 'mymaster', password: 's3cret' });
        assert.deepEqual(config.listeners.map((l: Dict) => l.proxyProtocol), [['10.20.0.11', '10.20.0.12'], ['10.20.0.11', '10.20.0.12']]);
        assert.match(r.notes, /PTR {2}203\.0\.113\.10/);
      } else {
        assert.equal(find(r, 'Service').spec.externalTrafficPolicy, 'Local');
      }
      assert.match(r.notes, /doctor --config/);
      assert.match(r.notes, /loadBalancer\.ingress/);

      // The relay's own check of what the pod would start with.
      const dir = path.join(work, file ?? 'default');
      const relayFile = path.join(dir, 'relay.yaml');
      mkdirSync(dir, { recursive: true });
      writeFileSync(relayFile, assembled(r, dir));
      const check = await runCli(['config', 'check', '--config', relayFile]);
      assert.ok(check.code === 0 || check.code === 1, `config check exit ${check.code}\n${check.stdout}${check.stderr}`);
      assert.doesNotMatch(check.stdout, /^FAIL/m, check.stdout);
      assert.match(check.stdout, /valid \(/);
      if (file) {
        assert.match(check.stdout, /egress 203\.0\.113\.10: verified, HELO relay\.example\.com/, check.stdout);
        assert.match(check.stdout, /s2026/, check.stdout);
      }
    });
  }

  it('the config change rolls the pods: another config, another checksum', async () => {
    const a = await renderChart(CHART, {});
    const b = await renderChart(CHART, { values: { config: { log: { level: 'debug' } } } });
    const sum = (r: Rendered) => find(r, 'Deployment').spec.template.metadata.annotations['checksum/config'];
    assert.notEqual(sum(a), sum(b));
  });

  it('a broken template fails the checks', async () => {
    const chart = path.join(work, 'broken-chart');
    cpSync(CHART, chart, { recursive: true });
    cpSync(path.join(FIXTURES, 'broken-deployment.yaml'), path.join(chart, 'templates/deployment.yaml'));
    assert.deepEqual(missingValuePaths(chart, chartValues), ['volumes.sizeLimit']);
    // Rendering stops at the missing value, as helm does ("nil pointer evaluating interface {}.sizeLimit").
    await assert.rejects(renderChart(chart, {}), /sizeLimit/);
    // With the value given, it renders, and the quoted port fails the Kubernetes schema.
    const r = await renderChart(chart, { values: { volumes: { sizeLimit: '1Gi' } } });
    assert.match(kubernetesErrors(r.objects).join('\n'), /containerPort must be integer/);
    // A template that does not parse.
    writeFileSync(path.join(chart, 'templates/pdb.yaml'), '{{- if .Values.podDisruptionBudget.enabled }}\nkind: PodDisruptionBudget\n');
    await assert.rejects(renderChart(chart, {}), /unexpected EOF/);
  });

  it('broken values also fail past the schema: the rendered Service is not a valid object', async () => {
    // helm would stop at values.schema.json; rendered anyway, the port fails the Kubernetes schema.
    const r = await renderChart(CHART, { values: fixture('broken-values.yaml') });
    assert.match(kubernetesErrors(r.objects).join('\n'), /Service mail-hygiene-relay: .*port/);
  });
});

function mergeDeep(a: Dict, b: Dict): Dict {
  const out: Dict = structuredClone(a);
  for (const [k, v] of Object.entries(b)) {
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && out[k] && typeof out[k] === 'object' && !Array.isArray(out[k]) ? mergeDeep(out[k], v) : v;
  }
  return out;
}

function withFixture(name: string): { merged: Dict } {
  return { merged: mergeDeep(chartValues, fixture(name)) };
}

/** `.Values` paths of the chart's templates that values.yaml does not have (a prefix that is a map of free keys counts). */
function missingValuePaths(chart: string, values: Dict): string[] {
  const missing: string[] = [];
  for (const dotted of valuePaths(chart).keys()) {
    let node: any = values;
    for (const key of dotted.split('.')) {
      if (node === null || typeof node !== 'object' || !(key in node)) {
        missing.push(dotted);
        break;
      }
      node = node[key];
    }
  }
  return missing.sort();
}
