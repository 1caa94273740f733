// The break test of strict field validation, generated: one copy of a manifest per field,
// at every depth, with that field's name misspelled. Each copy must be rejected. Keys of
// free-form maps (labels, ConfigMap data, resource quantities) are user data, not fields,
// and are left alone.
const FREE_FORM_MAPS = new Set(['labels', 'annotations', 'matchLabels', 'data', 'binaryData', 'requests', 'limits', 'nodeSelector']);

/** Yields [path, copy] for every field of object, the field at path renamed by dropping its last letter. */
export function* misspellings(object, path = []) {
  if (object === null || typeof object !== 'object') return;
  if (Array.isArray(object)) {
    for (const [index, item] of object.entries()) {
      for (const [where, copy] of misspellings(item, [...path, index])) yield [where, object.map((other, i) => (i === index ? copy : other))];
    }
    return;
  }
  const freeForm = FREE_FORM_MAPS.has(path.at(-1));
  for (const [key, value] of Object.entries(object)) {
    if (!freeForm && key.length > 1 && !(key.slice(0, -1) in object)) {
      yield [[...path, key].join('.'), renamed(object, key, key.slice(0, -1))];
    }
    for (const [where, copy] of misspellings(value, [...path, key])) yield [where, { ...object, [key]: copy }];
  }
}

function renamed(object, from, to) {
  return Object.fromEntries(Object.entries(object).map(([key, value]) => [key === from ? to : key, value]));
}
