/* The links between the activation atlas and its dictionary (atlas dictionary): a cell's strongest features in the
 * hover label and the side panel (each with its icon, density and top classes), and one feature's cells lit up as
 * the class heatmap lights a class's (its column of levels/<g>/feature_heat.npy, read by HTTP Range like
 * attribution.npy). Reads and sets the page state (app) it is given; the shading is overlay.js's, from app.heat. */

import { classColumn, loadAttribution } from "./attribution.js";
import { byId } from "./dom.js";
import { cellFeatureLine, columnMax, featureLabel, featureSummary } from "./feature_links.js";
import { escapeHtml, fmt } from "./format.js";
import { fetchOk } from "./net.js";

// The toolbar's link to the feature map (dictionary/map/), where the bundle has one.
export function showFeatureMapLink(m) {
  const link = byId("feature-map");
  if (!m.dictionary || !m.dictionary.map) return;
  link.href = m.dictionary.map.viewer;
  link.hidden = false;
}

// Whether this bundle's dictionary has links to the cells of this grid.
export function hasFeatureLinks(app, level) {
  return !!(app.manifest && app.manifest.dictionary && level && level.cell_features);
}

// dictionary/features.json, read once: one record per feature.
function loadFeatureRecords(app) {
  if (!app.featureRecords) {
    app.featureRecords = fetchOk(app.manifest.dictionary.features_file).then((r) => r.json())
      .then((records) => { app.atlas.featureRecords = records; return records; });
  }
  return app.featureRecords;
}

// The level's cell_features.json, read once: per cell, its strongest features.
function loadCellFeatures(level) {
  if (!level.cellFeaturesPromise) {
    level.cellFeaturesPromise = fetchOk(level.cell_features).then((r) => r.json()).then((tops) => { level.cellFeatures = tops; return tops; });
  }
  return level.cellFeaturesPromise;
}

// The hover label's line of the cell's strongest features; "" until they are loaded (then `reshow` is called).
export function featureTipHtml(app, level, cell, reshow) {
  if (cell.feature !== undefined) {  // a cell of the feature map: its densest feature in words
    const record = { density: cell.density, top_classes: cell.top_classes, fidelity: cell.feature_fidelity };
    return "<div class=\"tip-features\">" + escapeHtml(featureLabel(cell.feature) + ": " + featureSummary(record, 3)) + "</div>";
  }
  if (!hasFeatureLinks(app, level)) return "";
  if (!level.cellFeatures) { loadCellFeatures(level).then(reshow, (err) => app.fail(err.message)); return ""; }
  const line = cellFeatureLine(level.cellFeatures[cell.n]);
  return line ? "<div class=\"tip-features\">" + escapeHtml("features: " + line) + "</div>" : "";
}

// The side panel's list of the cell's strongest features, each a button that lights up its cells.
export function showCellFeatures(app, level, cell) {
  const box = byId("panel-features"), list = byId("panel-feature-list");
  if (!hasFeatureLinks(app, level)) { box.hidden = true; return; }
  Promise.all([loadCellFeatures(level), loadFeatureRecords(app)]).then(([tops, records]) => {
    const top = tops[cell.n] || [];
    list.innerHTML = "";
    top.forEach((t) => {
      const record = records[t.feature], item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "feature-link";
      button.dataset.feature = String(t.feature);
      button.title = "Light up the cells where " + featureLabel(t.feature) + " fires";
      if (record && record.icon) {
        const icon = document.createElement("img");
        icon.src = record.icon;
        icon.alt = "icon of " + featureLabel(t.feature);
        button.appendChild(icon);
      }
      const text = document.createElement("span");
      text.innerHTML = "<b>" + escapeHtml(featureLabel(t.feature)) + "</b> " + escapeHtml(fmt(t.activation)) +
        " <span class=\"muted\">(active on " + escapeHtml((100 * t.active).toFixed(0)) + "% of the cell)</span><br>" +
        "<span class=\"muted\">" + escapeHtml(featureSummary(record)) + "</span>";
      button.appendChild(text);
      button.addEventListener("click", () => { setFeature(app, t.feature); });
      item.appendChild(button);
      list.appendChild(item);
    });
    if (!top.length) list.innerHTML = "<li class=\"muted\">No feature fires on this cell's rows.</li>";
    box.hidden = false;
  }).catch((err) => { app.fail(err.message); });
}

// Shade the grid shown by one feature's mean activation over each cell (app.heat, as the class heatmap).
export function setFeature(app, f) {
  const level = app.levels[app.current], search = byId("class-search");
  search.value = featureLabel(f);
  if (!hasFeatureLinks(app, level) || !level.feature_heat) { app.heat = null; showFeatureLegend(app, "This atlas has no dictionary links (run atlas dictionary RUN_DIR)."); return; }
  level.featureHeat = level.featureHeat || { attribution: level.feature_heat };
  Promise.all([loadAttribution(level.featureHeat), loadFeatureRecords(app)]).then(([head, records]) => {
    if (f < 0 || f >= head.shape[1]) { app.heat = null; showFeatureLegend(app, "No " + featureLabel(f) + ": the dictionary has " + head.shape[1] + " features."); app.changed(); return; }
    return classColumn(level.featureHeat, head, f).then((values) => {
      app.heat = { query: featureLabel(f), feature: f, label: featureLabel(f), grid: level.grid, values: values, max: columnMax(values), record: records[f] };
      showFeatureLegend(app, "");
      app.changed();
    });
  }).catch((err) => { app.fail(err.message); });
}

function showFeatureLegend(app, problem) {
  const legend = byId("legend");
  legend.hidden = false;
  if (problem) { legend.textContent = problem; return; }
  const heat = app.heat;
  legend.innerHTML = "mean activation of <b>" + escapeHtml(heat.label) + "</b>: 0<span class=\"scale\"></span>" + fmt(heat.max) +
    " <span class=\"muted\">(per cell, grid " + heat.grid + "; " + escapeHtml(featureSummary(heat.record)) + ")</span>" +
    " <button type=\"button\" id=\"legend-clear\" title=\"Clear (Esc)\">clear</button>";
  byId("legend-clear").addEventListener("click", () => { clearHeat(app); });
}

// Clear the heatmap, whichever it shows (a class or a feature).
export function clearHeat(app) {
  byId("class-search").value = "";
  app.heat = null;
  byId("legend").hidden = true;
  app.changed();
}
