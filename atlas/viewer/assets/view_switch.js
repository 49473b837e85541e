/* The toolbar's view buttons (icons, examples, both) and each grid layer's opacity for the view chosen: only the
 * chosen view's layers are drawn (a hidden layer loads nothing), at the opacities the cross-fade gives each grid.
 * Hover, click and the panel read the grid, never the view, so they work the same in every view. */

import { byId } from "./dom.js";
import { itemIndex, knownView } from "./views.js";

// Every layer's opacity: `opacities` per grid for the view shown, 0 for the others'.
export function applyOpacities(app, opacities) {
  app.opacities = opacities;
  const world = app.viewer.world, count = app.levels.length;
  app.views.forEach((view, v) => {
    opacities.forEach((opacity, k) => {
      const item = world.getItemAt(itemIndex(count, k, v));
      if (item) item.setOpacity(view === app.view ? opacity : 0);
    });
  });
}

function pressButton(view) {
  byId("views").querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.view === view)));
}

export function setView(app, asked) {
  const view = knownView(app.views, asked);
  if (view === app.view) return;
  app.view = view;
  pressButton(view);
  if (app.opacities) applyOpacities(app, app.opacities);
  app.viewer.forceRedraw();
  app.changed();
}

// The buttons show only where the bundle has the other views (a bundle tiled before them has icons alone).
export function setupViewButtons(app) {
  const group = byId("views");
  group.hidden = app.views.length < 2;
  pressButton(app.view);
  group.querySelectorAll("button").forEach((b) => {
    b.addEventListener("click", () => { setView(app, b.dataset.view); });
  });
}
