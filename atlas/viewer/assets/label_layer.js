/* The class labels drawn over the atlas (#labels): the top class of the cells on screen, placed sparsely by
 * class_labels.js once zoomed in far enough to read; the l key and the toolbar button turn them off and on. */

import { cellAtIndex, cellIndex } from "./cells.js";
import { labelsReadable, placeLabels } from "./class_labels.js";
import { byId, clearedCanvas } from "./dom.js";

const FONT = "600 12px system-ui, -apple-system, \"Segoe UI\", Roboto, sans-serif";

// The cells on screen whose details are loaded, with their top class.
function cellsOnScreen(level, origin, cellPx, width, height) {
  const g = level.grid, cells = [];
  const i0 = Math.max(0, Math.floor(-origin.x / cellPx)), i1 = Math.min(g - 1, Math.floor((width - origin.x) / cellPx));
  const j0 = Math.max(0, Math.floor(-origin.y / cellPx)), j1 = Math.min(g - 1, Math.floor((height - origin.y) / cellPx));
  for (let j = j0; j <= j1; j++) {
    for (let i = i0; i <= i1; i++) {
      if (cellIndex(level, i, j) < 0) continue;
      const cell = cellAtIndex(level, i, j);
      if (cell && cell.top_classes && cell.top_classes.length) cells.push({ i: i, j: j, label: cell.top_classes[0].label });
    }
  }
  return cells;
}

// The middle of the part of a cell (from `start`, `size` px) that is on screen (0 .. `extent`), kept `margin` px
// inside it: a cell larger than the screen still shows its label.
function visibleMiddle(start, size, extent, margin) {
  const low = Math.max(start, 0), high = Math.min(start + size, extent);
  const middle = (low + high) / 2;
  return high - low > 2 * margin ? Math.max(low + margin, Math.min(high - margin, middle)) : middle;
}

export function drawLabels(app) {
  const canvas = byId("labels"), viewer = app.viewer;
  if (!viewer || !viewer.world.getItemCount()) return;
  const { ctx, width, height } = clearedCanvas(canvas);
  app.placedLabels = [];
  const level = app.levels[app.current];
  if (!app.classLabels || !level || !level.index) return;
  const origin = viewer.viewport.viewportToViewerElementCoordinates(new OpenSeadragon.Point(0, 0), true);
  const corner = viewer.viewport.viewportToViewerElementCoordinates(new OpenSeadragon.Point(1, 1), true);
  const cellPx = (corner.x - origin.x) / level.grid;
  if (!labelsReadable(app.zoom(), cellPx)) return;
  ctx.font = FONT;
  const placed = placeLabels(cellsOnScreen(level, origin, cellPx, width, height), cellPx, (text) => ctx.measureText(text).width + 8);
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.lineJoin = "round";
  placed.forEach((p) => {
    const half = ctx.measureText(p.text).width / 2 + 3;  // the whole label on screen, whatever the cell's edge
    const x = Math.max(half, Math.min(width - half, visibleMiddle(origin.x + p.i * cellPx, cellPx, width, 0)));
    const y = Math.max(10, Math.min(height - 10, visibleMiddle(origin.y + p.j * cellPx, cellPx, height, 12)));
    ctx.lineWidth = 3.5;
    ctx.strokeStyle = "rgba(12, 12, 16, 0.85)";
    ctx.strokeText(p.text, x, y);
    ctx.fillStyle = "#fff";
    ctx.fillText(p.text, x, y);
  });
  app.placedLabels = placed.map((p) => ({ grid: level.grid, i: p.i, j: p.j, label: p.label, size: p.size }));
}

export function setLabels(app, on) {
  app.classLabels = on;
  byId("labels-toggle").setAttribute("aria-pressed", String(on));
  drawLabels(app);
  app.changed();
}
