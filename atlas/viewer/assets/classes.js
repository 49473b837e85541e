/* The model's classes as the page names and finds them: the heatmap's search box and the class picker.
 * No DOM: node tests it. */

// How many classes: the manifest's labels, else a loaded attribution file's width.
export function classCount(labels, levels) {
  if (labels) return labels.length;
  const level = levels.find((l) => l.attributionShape);
  return level ? level.attributionShape[1] : 0;
}

export function classLabel(labels, k) {
  return labels && labels[k] !== undefined ? labels[k] : "class " + k;
}

// The class a search means: an exact label, else the first label containing it, else "12" or "class 12"; -1 for none.
export function findClass(text, labels, n) {
  const q = text.trim().toLowerCase();
  if (!q) return -1;
  for (let k = 0; k < n; k++) if (classLabel(labels, k).toLowerCase() === q) return k;
  for (let k = 0; k < n; k++) if (classLabel(labels, k).toLowerCase().indexOf(q) >= 0) return k;
  const m = /^(?:class\s*)?(\d+)$/.exec(q);
  return m && (!n || +m[1] < n) ? +m[1] : -1;
}

// The picker's entries from classes/index.json (or the labels where there is none): built class atlases
// first, then by rows (the classes a build would succeed for), then in the model's order.
export function pickerItems(index, labels) {
  const items = index
    ? index.classes.map((c) => ({ index: c.index, name: c.name, rows: c.rows, folder: c.folder || null }))
    : (labels || []).map((name, k) => ({ index: k, name: name, rows: null, folder: null }));
  items.sort((x, y) => (!!y.folder - !!x.folder) || ((y.rows || 0) - (x.rows || 0)) || (x.index - y.index));
  return items;
}

// A class as `atlas classes --class` reads it: the name (quoted for a POSIX shell), or the index where the name is not unique.
export function classArgument(item, names) {
  const same = names.filter((name) => name === item.name).length;
  if (same > 1) return String(item.index);
  if (!/["$`\\!]/.test(item.name)) return "\"" + item.name + "\"";
  return "'" + item.name.replace(/'/g, "'\\''") + "'";
}
