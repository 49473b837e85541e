/* A cell up close: the hover label (#tip) and the side panel (#panel) with its icon, views, top classes and
 * dataset example patches. Reads and sets the page state (app) it is given. */

import { cellAtIndex, loadBlock, loadCells } from "./cells.js";
import { byId } from "./dom.js";
import { featureTipHtml, showCellFeatures } from "./features.js";
import { countText, escapeHtml, exampleWhere, fmt } from "./format.js";
import { levelOf } from "./grids.js";
import { pairColumnText } from "./subset.js";

function fidelityText(cell, level) {
  if (!cell.fidelity) return "";
  return "icon fidelity: cosine " + fmt(cell.fidelity.cosine, 2) + ", rank " + (cell.fidelity.rank + 1) + " of " + level.keptCount;
}

// The icon against its cell's example patches at earlier layers; ranked among the cells that have examples.
function pathText(cell, level) {
  if (!cell.path_check) return "";
  const of = level.path_check && level.path_check.cells ? level.path_check.cells : level.keptCount;
  return "path check: cosine " + fmt(cell.path_check.cosine, 2) + ", rank " + (cell.path_check.rank + 1) + " of " + of;
}

function topLabel(cell, otherwise) {
  return cell.top_classes && cell.top_classes.length ? cell.top_classes[0].label : otherwise;
}

// The label of the cell hovered (hit: {grid, i, j, cell}), beside the pointer; event null: where the pointer last was.
export function showTip(app, hit, event) {
  const tip = byId("tip");
  if (event) app.lastPointer = { clientX: event.clientX, clientY: event.clientY };
  if (!hit || !hit.cell) { tip.hidden = true; return; }
  event = event || app.lastPointer;
  const cell = hit.cell, level = app.levels[app.current], heat = app.heat;
  const classes = (cell.top_classes || []).slice(0, 5).map((c) =>
    "<li>" + escapeHtml(c.label) + " <span class=\"muted\">" + fmt(c.score) + "</span></li>").join("");
  const across = pairColumnText(app.manifest, hit.i, hit.grid);
  tip.innerHTML =
    "<div class=\"tip-title\">" + escapeHtml(topLabel(cell, "cell " + cell.i + ", " + cell.j)) + "</div>" +
    (classes ? "<ol>" + classes + "</ol>" : "") +
    "<div>" + escapeHtml(countText(cell)) + "</div>" +
    "<div class=\"muted\">" + escapeHtml(fidelityText(cell, level)) + "</div>" +
    (cell.path_check ? "<div class=\"muted\">" + escapeHtml(pathText(cell, level)) + "</div>" : "") +
    (across ? "<div class=\"muted tip-axis\">" + escapeHtml(across) + "</div>" : "") +
    (heat && heat.values && heat.grid === level.grid ? "<div>" + escapeHtml(heat.label) + ": " + fmt(heat.values[cell.n]) + "</div>" : "") +
    featureTipHtml(app, level, cell, () => { showTip(app, app.hovered, null); });
  app.atlas.lastTip = { grid: hit.grid, i: hit.i, j: hit.j, at: performance.now() };
  tip.hidden = false;
  if (event) {
    let x = event.clientX + 16, y = event.clientY + 16;
    const w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth - 4) x = Math.max(4, event.clientX - w - 12);
    if (y + h > window.innerHeight - 4) y = Math.max(4, event.clientY - h - 12);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
}

function figure(src, caption, build) {
  const box = document.createElement("figure");
  const img = document.createElement("img");
  img.src = src;
  img.alt = caption;
  if (build) build(img);
  const text = document.createElement("figcaption");
  text.textContent = caption;
  box.appendChild(img);
  box.appendChild(text);
  return box;
}

// The whole render behind an icon cropped to what the centre position sees, and the icon under its
// attribution transparency (render.alpha), when the bundle has them.
function showViews(cell) {
  const box = byId("panel-views");
  box.innerHTML = "";
  if (cell.view) box.appendChild(figure(cell.view, "full view (the icon is the part the centre position sees)"));
  if (cell.alpha) box.appendChild(figure(cell.icon, "with attribution transparency", (img) => { img.style.maskImage = "url(\"" + cell.alpha + "\")"; }));
  box.hidden = !box.childElementCount;
}

function showExamples(cell) {
  const examples = (cell.examples || []).filter((e) => e.patch);
  const box = byId("panel-examples");
  box.innerHTML = "";
  examples.forEach((e) => {
    const patch = figure(e.patch, "image " + e.image_id, (img) => {
      img.addEventListener("load", () => { if (img.naturalWidth < 64) img.classList.add("pixelated"); });
    });
    patch.querySelector("img").alt = "image " + e.image_id + exampleWhere(e);
    box.appendChild(patch);
  });
  if (!examples.length) box.innerHTML = "<p class=\"muted\">No example patches for this cell.</p>";
}

// Open the side panel on cell (i, j) of a grid, loading its block first; a position with no cell closes it.
export function selectCell(app, grid, i, j) {
  const level = levelOf(app.levels, grid);
  if (!level) return;
  loadCells(level, app.fail).then(() => loadBlock(level, i, j, app.fail)).then(() => {
    const cell = cellAtIndex(level, i, j);
    if (!cell) { closePanel(app); return; }
    app.selected = { grid: grid, i: i, j: j };
    const icon = byId("panel-icon");
    icon.src = cell.icon;
    icon.classList.toggle("pixelated", !!(app.manifest.tiles && app.manifest.tiles.scale > 1));
    byId("panel-title").textContent = topLabel(cell, "cell") + " \u2014 cell " + i + ", " + j + " of grid " + grid;
    byId("panel-stats").textContent = countText(cell) +
      (cell.fidelity ? "; " + fidelityText(cell, level) : "") + (cell.path_check ? "; " + pathText(cell, level) : "");
    showViews(cell);
    const top = cell.top_classes || [];
    const best = top.length ? Math.max.apply(null, top.map((c) => Math.abs(c.score))) || 1 : 1;
    byId("panel-classes").innerHTML = top.map((c) =>
      "<li>" + escapeHtml(c.label) + " <span class=\"muted\">" + fmt(c.score) + "</span>" +
      "<span class=\"bar\" style=\"width:" + Math.max(2, 100 * Math.max(0, c.score) / best).toFixed(0) + "%\"></span></li>").join("");
    showExamples(cell);
    showCellFeatures(app, level, cell);
    byId("panel").hidden = false;
    app.changed();
  });
}

export function closePanel(app) {
  app.selected = null;
  byId("panel").hidden = true;
  app.changed();
}
