/* atlas viewer, the page's entry module: every grid of the bundle as a Deep Zoom layer; zooming in shows finer grids.
 *
 * Reads manifest.json (levels with their .dzi, cell index, cell blocks and attribution.npy), opens all
 * pyramids in one OpenSeadragon world and shows the grid that suits the zoom (grids.js); hidden grids load
 * nothing. Hover: a cell's top classes, count, icon fidelity and path check; click: the side panel with the
 * icon and the dataset example patches (panel.js). A grid's cells are never loaded whole (cells.js); the
 * class heatmap reads one class's column of attribution.npy by HTTP Range (heatmap.js, attribution.js).
 * The view lives in the URL hash (url_state.js). The classes picker (picker.js) links to the class atlases
 * and comparisons built; a sub-bundle names itself and links back to its parent (title.js); a comparison
 * labels its axis and shows its patch experiment (pair.js). With a dictionary (atlas dictionary), a cell lists
 * its strongest features and a chosen feature lights up its cells (features.js). Each grid also has an examples
 * view and a split view (views.js, view_switch.js), a minimap (OpenSeadragon's navigator), class labels written
 * over the cells when zoomed in (class_labels.js, label_layer.js), and a cross-fade between grids (crossfade.js). A run of several layers
 * (model.layers) lists them in a chooser that opens another layer's atlas at the same rows (layer_chooser.js).
 *
 * The page's state is the one object `app` below, handed to each module; window.atlas is what tests and
 * scripts read. ES modules do not load from file:// URLs: the bundle is served (`atlas serve RUN_DIR`).
 */

import { crossFade } from "./crossfade.js";
import { drawLabels, setLabels } from "./label_layer.js";
import { applyOpacities, setupViewButtons, setView } from "./view_switch.js";
import { availableViews, itemIndex, knownView, nextView, viewSource } from "./views.js";
import { blocksToFetch, cellAtIndex, cellIndex, keptCells, loadBlock, loadCells } from "./cells.js";
import { byId } from "./dom.js";
import { emptyLevels, gridForZoom, levelOf, maxZoom, tiledLevels } from "./grids.js";
import { showFeatureMapLink } from "./features.js";
import { fillClassList, setClass } from "./heatmap.js";
import { setupLayers } from "./layer_chooser.js";
import { fetchOk } from "./net.js";
import { drawOverlay } from "./overlay.js";
import { setupPair } from "./pair.js";
import { closePanel, selectCell, showTip } from "./panel.js";
import { newPicker, setupPicker, togglePicker } from "./picker.js";
import { showTitle } from "./title.js";
import { readHash, viewHash } from "./url_state.js";

const MAX_PREFETCH = 64;  // blocks requested for one view at most

const atlas = (window.atlas = { ready: false, firstTileMs: null, firstTileLoadedMs: null, errors: [], levels: [] });
const app = {
  atlas: atlas,
  manifest: null,
  labels: null,
  viewer: null,
  levels: [],  // the grids with tiles, coarsest first; each also carries what has been read of it (cells.js)
  current: 0,  // the position in levels of the grid shown
  locked: false,  // a grid chosen in the toolbar, kept whatever the zoom
  selected: null,  // {grid, i, j} of the side panel's cell
  hovered: null,  // {grid, i, j, cell, pending} under the pointer
  heat: null,  // the heatmap: {query, k, label, grid, values, max}, or a dictionary feature's ({feature, record} for k)
  lastHash: "",
  lastPointer: null,
  picker: newPicker(),
  views: ["icons"],  // the views this bundle has (views.js), and the one shown
  view: "icons",
  classLabels: true,  // class labels written over the cells when zoomed in (label_layer.js); app.labels: the class names
  opacities: null,  // each grid's opacity in the view shown (crossfade.js)
  fade: {},
  zoom: () => relativeZoom(),
  fail: fail,
  changed: () => { drawOverlay(app); drawLabels(app); writeHash(); }
};
atlas.picker = app.picker;

fetchOk("manifest.json")
  .then((r) => r.json())
  .then(start)
  .catch((err) => {
    fail("Cannot read this atlas (" + err.message + "). Serve the run folder with `atlas serve RUN_DIR` and open the address it prints.");
  });

function fail(text) {
  atlas.errors.push(text);
  const box = byId("message");
  box.textContent = text;
  box.hidden = false;
}

function start(m) {
  app.manifest = m;
  app.labels = m.labels || null;
  showTitle(m);
  showFeatureMapLink(m);
  setupPicker(app);
  setupPair(app);
  setupLayers(app);
  const levels = (app.levels = atlas.levels = tiledLevels(m));
  const empty = emptyLevels(m);
  atlas.emptyGrids = empty.map((l) => l.grid);
  if (!levels.length && empty.length) {
    fail("No grid of this atlas has any cells: every cell holds fewer than grid.min_count activations. " +
         "Lower grid.min_count or collect more images, then re-run `atlas run`.");
    return;
  }
  if (!levels.length) { fail("This bundle has no tiles yet: re-run `atlas run` to build them."); return; }
  app.views = availableViews(levels);
  app.view = knownView(app.views, readHash(location.hash).show);  // a link's view loads first, not the icons
  fillGridSelect(levels, empty);
  fillClassList(app);
  openViewer(m, levels);
  wireControls();
  setupViewButtons(app);
}

function fillGridSelect(levels, empty) {
  const select = byId("grid-select");
  levels.forEach((l) => {
    const option = document.createElement("option");
    option.value = String(l.grid);
    option.textContent = l.grid + " \u00d7 " + l.grid;
    select.appendChild(option);
  });
  empty.forEach((l) => {
    const option = document.createElement("option");
    option.value = "empty-" + l.grid;
    option.disabled = true;
    option.textContent = l.grid + " \u00d7 " + l.grid + " (no cells)";
    option.title = l.note || "no cell holds grid.min_count activations";
    select.appendChild(option);
  });
}

function openViewer(m, levels) {
  const viewer = (app.viewer = atlas.viewer = OpenSeadragon({
    element: byId("atlas"),
    drawer: "canvas",
    showNavigationControl: false,
    preload: false,
    visibilityRatio: 0.5,
    constrainDuringPan: true,
    minZoomImageRatio: 0.5,
    maxZoomPixelRatio: 4,
    preserveImageSizeOnResize: true,
    animationTime: 0.5,
    imageSmoothingEnabled: (m.tiles && m.tiles.scale > 1) ? false : true,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true, scrollToZoom: true },
    gestureSettingsTouch: { clickToZoom: false, dblClickToZoom: true, pinchToZoom: true, flickEnabled: true },
    showNavigator: true,  // the minimap (#minimap, outside #atlas), the current view outlined
    navigatorId: sizedMinimap(),
    navigatorAutoFade: false,
    navigatorOpacity: 1,
    navigatorBackground: "#0f1014",
    navigatorBorderColor: "#3a3f4b",
    navigatorDisplayRegionColor: "#f5a623",
    // Every view's layers (views.js: itemIndex), only the coarsest grid of the view shown visible until the hash says more.
    tileSources: app.views.flatMap((view, v) => levels.map((l, k) =>
      ({ tileSource: viewSource(l, view), x: 0, y: 0, width: 1, opacity: view === app.view && k === 0 ? 1 : 0 })))
  }));

  viewer.addOnceHandler("tile-loaded", () => { atlas.firstTileLoadedMs = performance.now(); });
  viewer.addOnceHandler("tile-drawn", () => { atlas.firstTileMs = performance.now(); });
  viewer.addHandler("tile-load-failed", (e) => { atlas.errors.push("tile failed: " + (e.tile && e.tile.getUrl ? e.tile.getUrl() : "?")); });
  viewer.addHandler("open-failed", (e) => { fail("Cannot open the tiles: " + (e.message || "unknown error")); });
  viewer.addHandler("open", () => {
    setZoomLimit();
    applyHash(location.hash, true);
    atlas.ready = true;
    viewer.canvas.focus({ preventScroll: true });
  });
  viewer.addHandler("zoom", () => { if (!app.locked) chooseGrid(); });
  viewer.addHandler("update-viewport", () => { drawOverlay(app); drawLabels(app); });
  viewer.addHandler("resize", () => { setZoomLimit(); if (!app.locked) chooseGrid(); drawOverlay(app); });
  viewer.addHandler("animation-finish", () => { updateStatus(); writeHash(); prefetchBlocks(); });
  viewer.addHandler("canvas-click", (e) => {
    if (!e.quick) return;
    e.preventDefaultAction = true;
    const hit = cellAt(e.position);
    if (hit && hit.cell) selectCell(app, hit.grid, hit.cell.i, hit.cell.j); else closePanel(app);
  });
  new OpenSeadragon.MouseTracker({
    element: viewer.canvas,
    moveHandler: (e) => {
      if (e.pointerType === "touch") return;
      const hit = cellAt(e.position);
      app.hovered = hit && (hit.cell || hit.pending) ? hit : null;
      showTip(app, app.hovered, e.originalEvent);
      drawOverlay(app);
    },
    leaveHandler: () => { app.hovered = null; showTip(app, null); drawOverlay(app); }
  });
}

function wireControls() {
  const viewer = app.viewer, select = byId("grid-select"), search = byId("class-search");
  byId("zoom-in").addEventListener("click", () => { viewer.viewport.zoomBy(2); viewer.viewport.applyConstraints(); });
  byId("zoom-out").addEventListener("click", () => { viewer.viewport.zoomBy(0.5); viewer.viewport.applyConstraints(); });
  byId("home").addEventListener("click", () => { viewer.viewport.goHome(); });
  select.addEventListener("change", () => {
    app.locked = select.value !== "auto";
    if (app.locked) showGrid(app.levels.findIndex((l) => String(l.grid) === select.value));
    else chooseGrid();
    writeHash();
  });
  search.addEventListener("change", () => { setClass(app, search.value); });
  search.addEventListener("keydown", (e) => { if (e.key === "Enter") setClass(app, search.value); });
  search.addEventListener("input", () => { if (!search.value) setClass(app, ""); });
  byId("panel-close").addEventListener("click", () => { closePanel(app); });
  byId("labels-toggle").addEventListener("click", () => { setLabels(app, !app.classLabels); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      if (app.picker.open) { togglePicker(app, false); byId("picker-button").focus(); }
      else if (app.selected) closePanel(app);
      else if (app.heat) { search.value = ""; setClass(app, ""); }
    }
    else if (/^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName) || e.ctrlKey || e.metaKey || e.altKey) return;
    else if (e.key === "/") { e.preventDefault(); search.focus(); }
    else if (e.key === "v") setView(app, nextView(app.views, app.view));
    else if (e.key === "l") setLabels(app, !app.classLabels);
  });
  window.addEventListener("hashchange", () => { if (location.hash !== app.lastHash) applyHash(location.hash, false); });
}

/* ---- grids ---- */

// The minimap's box, a square a fifth of the atlas area's shorter side, 72 to 180 px (a phone keeps it small).
function sizedMinimap() {
  const main = document.querySelector("main"), box = byId("minimap");
  const side = Math.round(Math.max(72, Math.min(180, 0.2 * Math.min(main.clientWidth, main.clientHeight))));
  box.style.width = box.style.height = side + "px";
  box.hidden = false;
  return box.id;
}

function setZoomLimit() {
  const viewport = app.viewer.viewport;
  viewport.maxZoomLevel = maxZoom(app.levels, viewport.getContainerSize().x, viewport.getHomeZoom());
}

// Zoom as on-screen size relative to the whole atlas fitting the window's atlas area (1 at home),
// measured against <main>, which the side panel does not resize: opening it changes no grid.
function homeScale() {
  const main = document.querySelector("main");
  return Math.max(1, Math.min(main.clientWidth, main.clientHeight));
}

function relativeZoom(target) {
  return app.viewer.viewport.getZoom(!target) * app.viewer.viewport.getContainerSize().x / homeScale();
}

function zoomFor(relative) {
  return relative * homeScale() / Math.max(1, app.viewer.viewport.getContainerSize().x);
}

// Decided on the zoom being animated to, so a finer grid starts loading as the zoom starts.
function chooseGrid() {
  const pick = gridForZoom(app.levels, relativeZoom(true));
  if (pick !== app.current || !app.levels[pick].cellsLoaded) showGrid(pick);
}

function showGrid(k) {
  if (k < 0) return;
  const viewer = app.viewer, level = app.levels[k], previous = app.opacities ? app.current : -1;
  app.current = k;
  // The grid shown, over the next coarser one as a backdrop while its own tiles arrive; a change cross-fades.
  // (The same grid again while its fade runs, as its cells load, leaves the fade running.)
  if (previous !== k || !app.fade.frame) crossFade(app.fade, app.levels.length, previous, k, (opacities) => { applyOpacities(app, opacities); });
  loadCells(level, fail).then(() => {
    prefetchBlocks();
    updateStatus();
    if (app.heat) setClass(app, app.heat.query);
    drawOverlay(app);
  });
  if (app.locked) byId("grid-select").value = String(level.grid);
  viewer.forceRedraw();
  updateStatus();
  writeHash();
}

// The blocks of the cells on screen, so hovering them needs no request.
function prefetchBlocks() {
  const level = app.levels[app.current];
  if (!app.viewer || !level || !level.index || level.wholeCells || !level.cell_blocks) return;
  const size = level.cell_blocks.size;
  blocksToFetch(level, app.viewer.viewport.getBounds(true), MAX_PREFETCH).forEach((b) => {
    loadBlock(level, b.bi * size, b.bj * size, fail).then(() => { drawLabels(app); if (app.hovered) showTip(app, app.hovered, null); });
  });
}

function cellAt(position) {
  const level = app.levels[app.current];
  if (!level || !level.index) return null;
  const p = app.viewer.viewport.viewerElementToViewportCoordinates(position);
  if (p.x < 0 || p.y < 0 || p.x >= 1 || p.y >= 1) return null;
  const i = Math.floor(p.x * level.grid), j = Math.floor(p.y * level.grid);  // the whole cell, in every view
  if (cellIndex(level, i, j) < 0) return { grid: level.grid, i: i, j: j, cell: null };
  const cell = cellAtIndex(level, i, j);
  const hit = { grid: level.grid, i: i, j: j, cell: cell };
  if (!cell) {  // its block is on its way: show the tip when it lands, if the pointer is still there
    hit.pending = true;
    loadBlock(level, i, j, fail).then(() => {
      const hovered = app.hovered;
      if (hovered && hovered.grid === hit.grid && hovered.i === i && hovered.j === j) {
        hovered.cell = cellAtIndex(level, i, j);
        hovered.pending = false;
        showTip(app, hovered, null);
      }
    });
  }
  return hit;
}

/* ---- status and URL hash ---- */

function updateStatus() {
  if (!app.viewer) return;
  const level = app.levels[app.current], m = app.manifest;
  const parts = ["grid " + level.grid + " \u00d7 " + level.grid + (app.locked ? " (locked)" : "")];
  if (level.cellsLoaded) parts.push(level.keptCount + " cells");
  parts.push("zoom " + relativeZoom().toFixed(1) + "\u00d7");
  if (m.n_activations) parts.push(m.n_activations.toLocaleString() + " activations from " + (m.n_images || 0).toLocaleString() + " images");
  parts.push("drag or arrow keys to pan \u00b7 wheel, pinch or +/\u2212 to zoom \u00b7 click a cell for examples" +
    (app.views.length > 1 ? " \u00b7 v: icons, examples or both" : "") + " \u00b7 l: class labels");
  byId("status").textContent = parts.join(" \u00b7 ");
}

function writeHash() {
  if (!app.viewer || !atlas.ready) return;
  const centre = app.viewer.viewport.getCenter();
  const hash = viewHash({
    grid: app.levels[app.current].grid, locked: app.locked, x: centre.x, y: centre.y, zoom: relativeZoom(true),
    selected: app.selected, query: app.heat ? app.heat.query : null, show: app.view, labels: app.classLabels
  });
  if (hash !== location.hash) history.replaceState(null, "", hash);
  app.lastHash = location.hash;
}

function applyHash(hash, immediately) {
  const view = readHash(hash), viewport = app.viewer.viewport;
  if (isFinite(view.zoom) && view.zoom > 0) viewport.zoomTo(zoomFor(view.zoom), null, immediately);
  if (isFinite(view.x) && isFinite(view.y)) viewport.panTo(new OpenSeadragon.Point(view.x, view.y), immediately);
  if (immediately) viewport.applyConstraints(true);
  setView(app, view.show || "icons");
  if ((view.labels !== false) !== app.classLabels) setLabels(app, view.labels !== false);
  const k = app.levels.findIndex((l) => l.grid === view.grid);
  app.locked = view.locked && k >= 0;
  byId("grid-select").value = app.locked ? String(view.grid) : "auto";
  if (app.locked) showGrid(k); else chooseGrid();
  if (view.query) { byId("class-search").value = view.query; setClass(app, view.query); }
  if (view.selected) selectCell(app, view.selected.grid, view.selected.i, view.selected.j);
  else if (app.selected) closePanel(app);
}

/* ---- for tests and scripts: where a cell is on the page ---- */

atlas.cellCenter = (grid, i, j) => {
  const viewer = app.viewer;
  const point = viewer.viewport.viewportToViewerElementCoordinates(new OpenSeadragon.Point((i + 0.5) / grid, (j + 0.5) / grid), true);
  const box = viewer.element.getBoundingClientRect();
  return { x: box.left + point.x, y: box.top + point.y };
};
atlas.currentGrid = () => (app.levels[app.current] ? app.levels[app.current].grid : null);
// The kept cells of a loaded grid, as {i, j} (from its cell index: no cell details are needed).
atlas.keptCells = (grid) => {
  const level = levelOf(app.levels, grid);
  return level ? keptCells(level.index, grid) : [];
};
atlas.selected = () => app.selected;
atlas.view = () => app.view;
atlas.views = () => app.views.slice();
atlas.labels = () => (app.placedLabels || []).slice();  // the class labels drawn now: [{grid, i, j, label, size}]
// Every grid's layer opacity in the view shown, coarsest first (the cross-fade's state).
atlas.opacities = () => app.levels.map((l, k) => {
  const item = app.viewer.world.getItemAt(itemIndex(app.levels.length, k, app.views.indexOf(app.view)));
  return item ? item.getOpacity() : 0;
});
// The heatmap shown (a class's or a dictionary feature's, features.js), its values in cell order.
atlas.heat = () => (app.heat ? { label: app.heat.label, feature: app.heat.feature, grid: app.heat.grid, values: Array.from(app.heat.values) } : null);
