// Strict field validation, as `kubectl apply --validate=strict` and an API server with
// fieldValidation=Strict do it: every field of a manifest must exist at its place in the
// schema. kubernetes-models' compiled JSON-schema validators allow extra properties, so a
// misspelled field (`podMetricsEndpoint`, `readinesProbe`) would pass them and be dropped,
// with a warning at best, by the cluster. The schema walked here is the TypeScript
// declaration the same package generates from the same OpenAPI spec: each object's
// properties, arrays' element types, and index signatures for free-form maps (labels, data,
// resource limits). Value types are left to the JSON-schema validators.
import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const require = createRequire(import.meta.url);
const ts = require('typescript');

/**
 * Compiles one declaration file that names each model's interface, once for all manifests.
 * models: { key: [module, interfaceName] }. Returns check(key, object) -> problems.
 */
export function strictFieldChecker(models, scratchDirectory) {
  const entry = join(scratchDirectory, 'strict-field-models.ts');
  const lines = Object.entries(models).map(([key, [module, name]], index) => `import type { ${name} as M${index} } from ${JSON.stringify(module)};\nexport type T${index} = M${index}; // ${key}`);
  writeFileSync(entry, lines.join('\n') + '\n');
  const program = ts.createProgram([entry], {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
  });
  const diagnostics = ts.getPreEmitDiagnostics(program);
  if (diagnostics.length > 0) {
    throw new Error(`model declarations do not compile: ${ts.flattenDiagnosticMessageText(diagnostics[0].messageText, '\n')}`);
  }
  const checker = program.getTypeChecker();
  const exportsOf = checker.getExportsOfModule(checker.getSymbolAtLocation(program.getSourceFile(entry)));
  const types = new Map(Object.keys(models).map((key, index) => {
    const alias = exportsOf.find((symbol) => symbol.name === `T${index}`);
    return [key, checker.getDeclaredTypeOfSymbol(alias)];
  }));
  return (key, object) => {
    const problems = [];
    walk(checker, object, types.get(key), '', problems);
    return problems;
  };
}

/** Reports every key of value that its schema type does not declare, depth first. */
function walk(checker, value, type, path, problems) {
  if (value === null || typeof value !== 'object') return;
  const schema = checker.getNonNullableType(type);
  if (schema.flags & (ts.TypeFlags.Any | ts.TypeFlags.Unknown)) return; // free-form (RawExtension, preserve-unknown-fields)
  if (Array.isArray(value)) {
    const element = elementType(checker, schema);
    if (element) value.forEach((item, index) => walk(checker, item, element, `${path}[${index}]`, problems));
    return; // not an array in the schema: the JSON-schema validator reports the type
  }
  const candidates = (schema.isUnion() ? schema.types : [schema]).filter((member) => member.flags & ts.TypeFlags.Object);
  if (candidates.length === 0) return;
  for (const [key, child] of Object.entries(value)) {
    const where = path === '' ? key : `${path}.${key}`;
    const childType = propertyType(checker, candidates, key);
    if (childType === undefined) {
      const known = candidates.flatMap((member) => checker.getPropertiesOfType(member).map((symbol) => symbol.name));
      problems.push(`${where}: unknown field "${key}"${suggestion(key, known)}`);
      continue;
    }
    walk(checker, child, childType, where, problems);
  }
}

/** The type a key has in the first candidate that declares it by name or by a string index signature. */
function propertyType(checker, candidates, key) {
  for (const member of candidates) {
    const property = checker.getPropertyOfType(member, key);
    if (property) return checker.getTypeOfSymbol(property);
  }
  for (const member of candidates) {
    const index = checker.getIndexInfoOfType(member, ts.IndexKind.String);
    if (index) return index.type;
  }
  return undefined;
}

function elementType(checker, schema) {
  for (const member of schema.isUnion() ? schema.types : [schema]) {
    if (checker.isArrayType(member)) return checker.getTypeArguments(member)[0];
  }
  return undefined;
}

/** ", did you mean X?" for the known field nearest by edit distance, when it is close. */
function suggestion(key, known) {
  let best;
  let bestDistance = Math.max(2, Math.floor(key.length / 4)) + 1;
  for (const name of known) {
    const distance = editDistance(key.toLowerCase(), name.toLowerCase());
    if (distance < bestDistance) [best, bestDistance] = [name, distance];
  }
  return best ? `, did you mean "${best}"?` : '';
}

function editDistance(a, b) {
  let previous = Array.from({ length: b.length + 1 }, (_, index) => index);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length];
}
