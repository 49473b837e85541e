/* The class search: cells dimmed by their mean attribution to one class (#class-search, #legend); the
 * shading itself is drawn by overlay.js from app.heat. */

import { classColumn, loadAttribution } from "./attribution.js";
import { classCount, classLabel, findClass } from "./classes.js";
import { byId } from "./dom.js";
import { columnMax, featureQuery } from "./feature_links.js";
import { hasFeatureLinks, setFeature } from "./features.js";
import { escapeHtml, fmt } from "./format.js";

// The search box's suggestions: every class label (or "class K" for a model without labels).
export function fillClassList(app) {
  const list = byId("class-list");
  list.innerHTML = "";
  const n = classCount(app.labels, app.levels);
  for (let k = 0; k < n; k++) {
    const option = document.createElement("option");
    option.value = classLabel(app.labels, k);
    list.appendChild(option);
  }
}

function showLegend(app, problem) {
  const legend = byId("legend");
  legend.hidden = false;
  if (problem) { legend.textContent = problem; return; }
  const heat = app.heat;
  legend.innerHTML = "attribution to <b>" + escapeHtml(heat.label) + "</b>: 0<span class=\"scale\"></span>" + fmt(heat.max) +
    " <span class=\"muted\">(mean per cell, grid " + heat.grid + ")</span>";
}

// Shade the grid shown by the class the text names; empty text clears the heatmap.
export function setClass(app, text) {
  const level = app.levels[app.current];
  if (!text || !text.trim()) { app.heat = null; byId("legend").hidden = true; app.changed(); return; }
  if (featureQuery(text) >= 0 && hasFeatureLinks(app, level)) { setFeature(app, featureQuery(text)); return; }
  loadAttribution(level).then((head) => {
    if (!head) { app.heat = null; showLegend(app, "This atlas has no class attribution (collect.attribution was off)."); return; }
    if (!app.labels && !byId("class-list").options.length) fillClassList(app);  // the width is known now
    const n = classCount(app.labels, app.levels), k = findClass(text, app.labels, n);
    if (k < 0 || k >= head.shape[1]) { app.heat = null; showLegend(app, "No class matches \u201c" + text + "\u201d."); app.changed(); return; }
    return classColumn(level, head, k).then((values) => ({ k: k, values: values }));
  }).then((found) => {
    if (!found) return;
    const values = found.values;
    app.heat = { query: text, k: found.k, label: classLabel(app.labels, found.k), grid: level.grid, values: values, max: columnMax(values) };
    showLegend(app, "");
    app.changed();
  }).catch((err) => { app.fail(err.message); });
}
