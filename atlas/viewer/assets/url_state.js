/* The view in the URL hash (#g=GRID&lock=1&x=X&y=Y&z=ZOOM&cell=G:I,J&class=QUERY&view=examples&labels=0), so a
 * link reopens the same grid, place, selected cell, heatmap, view (icons, examples or both) and class labels.
 * No DOM: node tests the round trip. */

// view: {grid, locked, x, y, zoom (relative to the whole atlas), selected ({grid, i, j} or null), query (or null),
// and optionally show ("icons", "examples" or "both"; icons is left out) and labels (false is written as labels=0)}.
export function viewHash(view) {
  const params = new URLSearchParams();
  params.set("g", String(view.grid));
  if (view.locked) params.set("lock", "1");
  params.set("x", view.x.toFixed(4));
  params.set("y", view.y.toFixed(4));
  params.set("z", view.zoom.toFixed(3));
  if (view.selected) params.set("cell", view.selected.grid + ":" + view.selected.i + "," + view.selected.j);
  if (view.query) params.set("class", view.query);
  if (view.show && view.show !== "icons") params.set("view", view.show);
  if (view.labels === false) params.set("labels", "0");
  return "#" + params.toString();
}

// What a hash asks for; a number it lacks or garbles is NaN (left as it is), grid/cell/class null; show and labels
// only where the hash has them (the page's defaults: icons, labels on).
export function readHash(hash) {
  const params = new URLSearchParams(hash.replace(/^#/, ""));
  const grid = parseInt(params.get("g"), 10);
  const cell = /^(\d+):(\d+),(\d+)$/.exec(params.get("cell") || "");
  const view = {
    grid: isFinite(grid) ? grid : null,
    locked: params.get("lock") === "1",
    x: parseFloat(params.get("x")),
    y: parseFloat(params.get("y")),
    zoom: parseFloat(params.get("z")),
    selected: cell ? { grid: +cell[1], i: +cell[2], j: +cell[3] } : null,
    query: params.get("class") || null
  };
  if (params.get("view")) view.show = params.get("view");  // only what the hash says: show and labels are optional
  if (params.has("labels")) view.labels = params.get("labels") !== "0";
  return view;
}
