/* Numbers and text as the page writes them (hover, panel, picker, patch table). No DOM: node tests it. */

export function fmt(x, digits) {
  if (x === undefined || x === null || !isFinite(x)) return "\u2013";
  const a = Math.abs(x);
  return a !== 0 && (a < 0.001 || a >= 10000) ? x.toExponential(2) : x.toFixed(digits === undefined ? 3 : digits);
}

export function percent(x) {
  if (x === null || x === undefined || !isFinite(x)) return "\u2013";
  return x === 0 ? "0%" : x === 1 ? "100%" : (100 * x).toFixed(1) + "%";
}

const ENTITIES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

// Bundle text (labels, file names, notes) goes into innerHTML only through this.
export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (ch) => ENTITIES[ch]);
}

export function rowsText(rows) {
  return rows === null || rows === undefined ? "" : rows.toLocaleString() + " row" + (rows === 1 ? "" : "s");
}

export function plural(n, word) {
  return n + " " + word + (n === 1 ? "" : "s");
}

// How many rows a cell averages, and how many of them are class-token rows (collect.class_token) where any are.
export function countText(cell) {
  if (cell.features) return plural(cell.count, "dictionary feature") + " in this cell (the feature map)";
  const tokens = cell.class_tokens || 0;
  return "average of " + plural(cell.count, "activation") + (tokens ? " (" + plural(tokens, "class token") + ")" : "");
}

// Where an example row was read: a position of the layer, or (y = x = -1) the class token, whose example is the whole image.
export function exampleWhere(example) {
  return example.y === -1 && example.x === -1 ? ", its class token (the whole image)" : " at (" + example.y + ", " + example.x + ")";
}
