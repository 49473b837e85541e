/* The atlas's views: the icons, the cells' real example patches, or both side by side in each cell. Every grid
 * has one Deep Zoom layer per view (the manifest level's dzi and views); only the chosen view's layers show.
 * A bundle tiled before the examples view (no level has views) offers the icons alone. No DOM: node tests it. */

export const VIEWS = ["icons", "examples", "both"];

// The views every tiled grid has: all three, or the icons alone when any grid lacks the others' pyramids.
export function availableViews(levels) {
  const complete = levels.length > 0 && levels.every((l) => l.views && VIEWS.slice(1).every((v) => l.views[v]));
  return complete ? VIEWS.slice() : ["icons"];
}

// The .dzi of one grid's view.
export function viewSource(level, view) {
  return view === "icons" ? level.dzi : level.views[view];
}

// The view after `current` in `views` (the key cycles through them).
export function nextView(views, current) {
  return views[(views.indexOf(current) + 1) % views.length];
}

// A view a URL or a button asks for, or icons when this bundle has no such view.
export function knownView(views, asked) {
  return views.includes(asked) ? asked : "icons";
}

// Where a grid's layer of a view is in OpenSeadragon's world: the icons' layers first, coarsest first, then each
// other view's, so a grid's finer neighbour is always drawn over it.
export function itemIndex(levelCount, k, viewPosition) {
  return viewPosition * levelCount + k;
}
