// Validates Kubernetes manifests against the API schemas of the npm packages
// kubernetes-models and @kubernetes-models/prometheus-operator (JSON schema of each kind),
// rejects every field the schema does not have at its place (strict field validation, as
// `kubectl --validate=strict`: kubernetes-strict-fields.mjs), then checks what a kubelet enforces at admission and the schema cannot say:
// runAsNonRoot needs a numeric runAsUser when the image's user is a name (ours is "node"),
// and restartPolicy on a container is only for native sidecars (initContainers, Always).
// Run from a directory that holds kubernetes-strict-fields.mjs and whose node_modules has
// those packages, yaml and typescript:
//   node validate-kubernetes.mjs FILE...
// With --misspell it runs the break test instead: every manifest with each of its fields
// misspelled in turn (kubernetes-misspellings.mjs) must be rejected; exit 1 names each one
// that passed.
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { strictFieldChecker } from './kubernetes-strict-fields.mjs';
import { misspellings } from './kubernetes-misspellings.mjs';

// apiVersion/kind -> [module, the interface of its object]
const MODELS = {
  'v1/ConfigMap': ['kubernetes-models/v1/ConfigMap', 'IConfigMap'],
  'v1/Pod': ['kubernetes-models/v1/Pod', 'IPod'],
  'apps/v1/Deployment': ['kubernetes-models/apps/v1/Deployment', 'IDeployment'],
  'monitoring.coreos.com/v1/PodMonitor': ['@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor', 'IPodMonitor'],
  'monitoring.coreos.com/v1/ServiceMonitor': ['@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor', 'IServiceMonitor'],
};
const unknownFields = strictFieldChecker(MODELS, dirname(fileURLToPath(import.meta.url)));

function kubeletRules(object) {
  const spec = object.kind === 'Pod' ? object.spec : object.spec?.template?.spec;
  if (!spec) return [];
  const problems = [];
  const podContext = spec.securityContext ?? {};
  const lists = [['containers', spec.containers ?? []], ['initContainers', spec.initContainers ?? []]];
  for (const [list, containers] of lists) {
    for (const container of containers) {
      const where = `${list}[${container.name}]`;
      const context = { ...podContext, ...(container.securityContext ?? {}) };
      if (context.runAsNonRoot === true && !Number.isInteger(context.runAsUser)) {
        problems.push(`${where}: runAsNonRoot without a numeric runAsUser: a kubelet rejects an image whose user is a name`);
      }
      if (context.runAsUser === 0 && context.runAsNonRoot === true) problems.push(`${where}: runAsNonRoot with runAsUser 0`);
      if (container.restartPolicy !== undefined && !(list === 'initContainers' && container.restartPolicy === 'Always')) {
        problems.push(`${where}: restartPolicy is only allowed on an init container, as Always (native sidecar)`);
      }
      const ports = new Set((container.ports ?? []).flatMap((port) => [port.name, port.containerPort]));
      for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
        const port = container[probe]?.httpGet?.port;
        if (port !== undefined && typeof port === 'string' && !ports.has(port)) problems.push(`${where}: ${probe} names port "${port}" the container does not declare`);
      }
      if (container.resources?.limits?.memory === undefined) problems.push(`${where}: no memory limit`);
    }
  }
  return problems;
}

/** Every reason an API server or a kubelet would reject object, or [] when it would take it. */
async function problemsOf(object) {
  const key = `${object?.apiVersion}/${object?.kind}`;
  const [module] = MODELS[key] ?? [];
  if (!module) return [`no schema for ${key}`];
  const exported = await import(module);
  const Model = exported.default ?? exported[object.kind];
  const problems = [];
  try {
    new Model(object).validate();
  } catch (error) {
    problems.push(error.message);
  }
  return [...problems, ...unknownFields(key, object), ...kubeletRules(object)];
}

const misspell = process.argv[2] === '--misspell';
let failed = false;
let checked = 0;
for (const file of process.argv.slice(misspell ? 3 : 2)) {
  for (const document of parseAllDocuments(readFileSync(file, 'utf8'))) {
    if (document.errors.length > 0) {
      console.error(`${file}: ${document.errors[0].message}`);
      failed = true;
      continue;
    }
    const object = document.toJS();
    if (object === null) continue;
    const where = `${file}: ${object.kind ?? '?'} ${object.metadata?.name ?? '?'}`;
    if (!misspell) {
      for (const problem of await problemsOf(object)) {
        console.error(`${where}: ${problem}`);
        failed = true;
      }
      checked++;
      continue;
    }
    for (const [field, copy] of misspellings(object)) {
      if ((await problemsOf(copy)).length === 0) {
        console.error(`${where}: accepted with ${field} misspelled`);
        failed = true;
      }
      checked++;
    }
  }
}
if (checked === 0) {
  console.error('no manifests checked');
  failed = true;
}
if (failed) process.exit(1);
console.log(misspell ? `kubernetes: ${checked} misspelled fields, each rejected` : `kubernetes: ${checked} manifests valid`);
