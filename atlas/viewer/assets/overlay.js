/* The canvas over the atlas (#overlay): the heatmap's shading, the hovered cell's outline and the selected
 * cell's, redrawn whenever the viewport moves. */

import { byId, clearedCanvas } from "./dom.js";

function shadeHeatmap(ctx, level, heat, origin, cw, ch, width, height) {
  const g = level.grid;
  const i0 = Math.max(0, Math.floor(-origin.x / cw)), i1 = Math.min(g - 1, Math.floor((width - origin.x) / cw));
  const j0 = Math.max(0, Math.floor(-origin.y / ch)), j1 = Math.min(g - 1, Math.floor((height - origin.y) / ch));
  for (let j = j0; j <= j1; j++) {
    for (let i = i0; i <= i1; i++) {
      const n = level.index[j * g + i];
      const s = n >= 0 && heat.max > 0 ? Math.max(0, Math.min(1, heat.values[n] / heat.max)) : 0;
      const x = origin.x + i * cw, y = origin.y + j * ch;
      ctx.fillStyle = "rgba(10, 10, 14, " + (0.85 * (1 - Math.sqrt(s))).toFixed(3) + ")";
      ctx.fillRect(x, y, cw + 0.5, ch + 0.5);
      if (s > 0.05 && cw > 6) {
        ctx.strokeStyle = "rgba(255, 200, 60, " + s.toFixed(3) + ")";
        ctx.lineWidth = Math.max(1, Math.min(4, cw / 20));
        ctx.strokeRect(x + ctx.lineWidth / 2, y + ctx.lineWidth / 2, cw - ctx.lineWidth, ch - ctx.lineWidth);
      }
    }
  }
}

export function drawOverlay(app) {
  const canvas = byId("overlay"), viewer = app.viewer;
  if (!viewer || !viewer.world.getItemCount()) return;
  const { ctx, width, height } = clearedCanvas(canvas);
  const level = app.levels[app.current];
  if (!level) return;
  const g = level.grid;
  const origin = viewer.viewport.viewportToViewerElementCoordinates(new OpenSeadragon.Point(0, 0), true);
  const corner = viewer.viewport.viewportToViewerElementCoordinates(new OpenSeadragon.Point(1, 1), true);
  const cw = (corner.x - origin.x) / g, ch = (corner.y - origin.y) / g;
  if (app.heat && app.heat.grid === g && level.index) shadeHeatmap(ctx, level, app.heat, origin, cw, ch, width, height);
  const hovered = app.hovered, selected = app.selected;
  if (hovered && hovered.grid === g) {
    ctx.strokeStyle = "rgba(255, 255, 255, 0.9)";
    ctx.lineWidth = 1.5;
    ctx.strokeRect(origin.x + hovered.i * cw, origin.y + hovered.j * ch, cw, ch);
  }
  if (selected) {
    const sw = (corner.x - origin.x) / selected.grid, sh = (corner.y - origin.y) / selected.grid;
    ctx.strokeStyle = "#f5a623";
    ctx.lineWidth = 2.5;
    ctx.strokeRect(origin.x + selected.i * sw, origin.y + selected.j * sh, sw, sh);
  }
}
