/* Which grid suits the zoom. Every grid is one Deep Zoom layer, 1 unit wide; the coarsest shows at the
 * whole-atlas view, then each finer grid once its cells would be drawn at least SWITCH times the coarsest
 * grid's cell size at home. No DOM: node tests it. */

export const SWITCH = 0.8;

// The grids that have tiles, coarsest first.
export function tiledLevels(manifest) {
  return (manifest.levels || []).filter((l) => l.dzi).sort((a, b) => a.grid - b.grid);
}

// A grid whose cells all hold fewer than grid.min_count activations: a valid, empty result, with no tiles.
export function emptyLevels(manifest) {
  return (manifest.levels || []).filter((l) => l.n_cells === 0);
}

export function levelOf(levels, grid) {
  return levels.find((l) => l.grid === grid);
}

// The position in levels of the grid to show at a zoom relative to the whole atlas (1 at home).
export function gridForZoom(levels, relative) {
  let pick = 0;
  for (let k = 1; k < levels.length; k++) {
    if ((levels[0].grid / levels[k].grid) * relative >= SWITCH) pick = k;
  }
  return pick;
}

// The deepest zoom (OpenSeadragon's units): the finest grid at 4 screen pixels per canvas pixel, and at least
// far enough to show every grid with room to spare (small canvases would stop OpenSeadragon early).
export function maxZoom(levels, containerWidth, homeZoom) {
  const finest = levels[levels.length - 1];
  const native = (finest.canvas_px || 1024) / Math.max(1, containerWidth);
  const everyGrid = homeZoom * (finest.grid / levels[0].grid) * 2 / SWITCH;
  return Math.max(4 * native, everyGrid);
}
