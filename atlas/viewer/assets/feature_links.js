/* The dictionary's features as the page names them and lists them for a cell (the links between the activation
 * atlas and the dictionary, levels/<g>/cell_features.json and dictionary/features.json). No DOM: node tests it. */

import { fmt, percent } from "./format.js";

// The feature a search or a URL names ("feature 12", "feature #12"), or -1.
export function featureQuery(text) {
  const m = /^\s*feature\s*#?\s*(\d+)\s*$/i.exec(text || "");
  return m ? +m[1] : -1;
}

export function featureLabel(f) {
  return "feature " + f;
}

// One feature's record in words: how often it fires and the classes it leans to (top `classes` of its top_classes).
export function featureSummary(record, classes) {
  if (!record) return "";
  const parts = ["density " + percent(record.density)];
  const top = (record.top_classes || []).slice(0, classes === undefined ? 2 : classes).map((c) => c.label);
  if (top.length) parts.push(top.join(", "));
  if (record.fidelity) parts.push("icon cosine " + fmt(record.fidelity.cosine, 2));
  return parts.join(" \u00b7 ");
}

// A cell's strongest features (its cell_features entry) as one short line: "feature 12 (0.531), feature 4 (0.200)".
export function cellFeatureLine(top, count) {
  return (top || []).slice(0, count === undefined ? 3 : count)
    .map((t) => featureLabel(t.feature) + " (" + fmt(t.activation) + ")").join(", ");
}

// The largest value of a heat column, for the shading's scale (0 for an empty or all-negative column).
export function columnMax(values) {
  let max = 0;
  for (let c = 0; c < values.length; c++) if (values[c] > max) max = values[c];
  return max;
}
