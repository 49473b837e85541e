/* A comparison of two classes (a sub-bundle of kind "pair"): its x axis labelled at the stage's edges
 * (left favours b, right favours a) and its patch experiment (patch.json) as a table. */

import { byId } from "./dom.js";
import { escapeHtml, percent } from "./format.js";
import { fetchOk } from "./net.js";
import { pairClasses } from "./subset.js";

const PATCH_KINDS = [
  ["icon", "icon", "the comparison's icons furthest towards b"],
  ["noise", "noise", "uniform noise of the same size (baseline)"],
  ["random_icon", "random icon", "an icon of the parent atlas, drawn at random (baseline)"]
];

export function setupPair(app) {
  const m = app.manifest, pair = pairClasses(m);
  if (!pair) return;
  const across = (m.pair && m.pair.x_axis) || "attribution to a minus attribution to b; right favours a";
  byId("axis-left").textContent = "\u2190 favours " + pair.b.name;
  byId("axis-right").textContent = "favours " + pair.a.name + " \u2192";
  byId("axis-left").title = byId("axis-right").title = "across: " + across + (m.pair && m.pair.y_axis ? "; down: " + m.pair.y_axis : "");
  byId("axis-left").hidden = byId("axis-right").hidden = false;
  const file = m.patch && m.patch.file;
  if (!file) return;  // the comparison was built without the patch experiment
  const box = byId("patch");
  if (window.matchMedia && window.matchMedia("(max-width: 720px)").matches) box.open = false;  // a phone: the summary only
  box.hidden = false;
  byId("patch-body").innerHTML = "<p class=\"muted\">loading " + escapeHtml(file) + "&hellip;</p>";
  fetchOk(file)
    .then((r) => r.json())
    .then((report) => {
      const n = report.n_images || 0;
      byId("patch-summary").textContent = "Patch experiment: " + n + " image" + (n === 1 ? "" : "s");
      byId("patch-body").innerHTML = patchHtml(report, pair);
      app.atlas.patch = report;  // tests wait on it: the table is there by then
    })
    .catch((err) => { byId("patch-body").innerHTML = "<p class=\"muted\">Cannot read the patch experiment: " + escapeHtml(err.message) + "</p>"; });
}

function flipCells(count, rule) {
  if (!count) return "<td class=\"" + rule + "-rate\">\u2013</td><td class=\"" + rule + "-n\">\u2013</td>";
  const interval = Array.isArray(count.interval) && count.interval.length === 2 ? " <span class=\"muted\">(" + percent(count.interval[0]).replace("%", "") +
    "\u2013" + percent(count.interval[1]) + ")</span>" : "";
  return "<td class=\"" + rule + "-rate\">" + percent(count.rate) + interval + "</td><td class=\"" + rule + "-n\">" + count.flips + "/" + count.n + "</td>";
}

function patchRows(report) {
  let rows = "";
  PATCH_KINDS.forEach((kind) => {
    const sizes = report[kind[0]] && Array.isArray(report[kind[0]].sizes) ? report[kind[0]].sizes : [];
    sizes.forEach((entry, k) => {
      const fraction = report.size_fractions && report.sizes && report.size_fractions.length === report.sizes.length ? report.size_fractions[report.sizes.indexOf(entry.size)] : undefined;
      rows += "<tr data-kind=\"" + kind[0] + "\" data-size=\"" + entry.size + "\">" +
        (k === 0 ? "<th scope=\"rowgroup\" rowspan=\"" + sizes.length + "\" title=\"" + escapeHtml(kind[2]) + "\">" + kind[1] + "</th>" : "") +
        "<td class=\"size\">" + entry.size + " px" + (fraction !== undefined ? " <span class=\"muted\">(" + Math.round(100 * fraction) + "%)</span>" : "") + "</td>" +
        flipCells(entry.corner, "corner") + flipCells(entry.best_corner, "best") + "</tr>";
    });
  });
  return rows;
}

// patch.json as the panel shows it: what was asked, on which images, and the flip rates with their intervals.
function patchHtml(report, pair) {
  const n = report.n_images || 0;
  const a = (report.pair && report.pair.a) || pair.a, b = (report.pair && report.pair.b) || pair.b;
  let html = report.question ? "<p class=\"question\">" + escapeHtml(report.question) + "</p>" : "";
  if (n > 0) {
    html += "<p>" + n + " image" + (n === 1 ? "" : "s") + " the model classifies as <b>" + escapeHtml(a.name) + "</b>, " +
      (report.held_out ? "<span class=\"held-out\">held out</span> (not among the images this atlas was built from)"
                       : "<span class=\"held-out\">not held out</span> (taken from the images this atlas was built from)") +
      (report.images_scanned ? "; " + report.images_scanned.toLocaleString() + " looked at" : "") + ". A flip: the top-1 class becomes <b>" + escapeHtml(b.name) + "</b>.</p>";
  }
  if (report.note) html += "<p class=\"note\">" + escapeHtml(report.note) + "</p>";
  const rows = patchRows(report);
  if (rows && n > 0) {
    const corner = String(report.corner || "fixed").replace(/_/g, " ");
    html += "<table id=\"patch-table\"><thead><tr><th rowspan=\"2\">patch</th><th rowspan=\"2\">side</th>" +
      "<th colspan=\"2\">" + escapeHtml(corner) + " corner</th><th colspan=\"2\">best of the 4 corners</th></tr>" +
      "<tr><th>flip rate (95% CI)</th><th>flips/n</th><th>flip rate (95% CI)</th><th>flips/n</th></tr></thead><tbody>" + rows + "</tbody></table>" +
      "<p class=\"hint\">Intervals: Wilson, 95%. Best corner: a flip at any of the four corners. Sides in the model's input pixels (fraction of its side)" +
      (report.seed !== undefined ? "; seed " + escapeHtml(report.seed) : "") + ".</p>";
  } else if (!report.note) {
    html += "<p class=\"note\">No image was tested.</p>";
  }
  return html;
}
