// Validates Kubernetes manifests against the API schemas of the npm packages
// kubernetes-models and @kubernetes-models/prometheus-operator (JSON schema of each kind),
// then checks what a kubelet enforces at admission and the schema cannot say:
// runAsNonRoot needs a numeric runAsUser when the image's user is a name (ours is "node"),
// and restartPolicy on a container is only for native sidecars (initContainers, Always).
// Run from a directory whose node_modules has those packages and yaml:
//   node validate-kubernetes.mjs FILE...
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';

const MODELS = {
  'v1/ConfigMap': 'kubernetes-models/v1/ConfigMap',
  'apps/v1/Deployment': 'kubernetes-models/apps/v1/Deployment',
  'monitoring.coreos.com/v1/PodMonitor': '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor',
  'monitoring.coreos.com/v1/ServiceMonitor': '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor',
};

function kubeletRules(object) {
  const spec = object.spec?.template?.spec;
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

let failed = false;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const document of parseAllDocuments(readFileSync(file, 'utf8'))) {
    if (document.errors.length > 0) {
      console.error(`${file}: ${document.errors[0].message}`);
      failed = true;
      continue;
    }
    const object = document.toJS();
    if (object === null) continue;
    const key = `${object.apiVersion}/${object.kind}`;
    const where = `${file}: ${object.kind ?? '?'} ${object.metadata?.name ?? '?'}`;
    const module = MODELS[key];
    if (!module) {
      console.error(`${where}: no schema for ${key}`);
      failed = true;
      continue;
    }
    const exported = await import(module);
    const Model = exported.default ?? exported[object.kind];
    try {
      new Model(object).validate();
    } catch (error) {
      console.error(`${where}: ${error.message}`);
      failed = true;
    }
    for (const problem of kubeletRules(object)) {
      console.error(`${where}: ${problem}`);
      failed = true;
    }
    checked++;
  }
}
if (checked === 0) {
  console.error('no manifests checked');
  failed = true;
}
if (failed) process.exit(1);
console.log(`kubernetes: ${checked} manifests valid`);
