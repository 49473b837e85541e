/* The layer chooser on the page (model.layers): a select listing the run's layers; choosing one opens that layer's
 * atlas (its own page, so the URL holds the choice) at the same zoom, centred on the rows of the cell under the
 * current centre (layers.js says why and how). Hidden for a bundle of one layer, and in a notebook's embedded
 * page (atlas/viewer/inline.py), which holds this bundle's files only and has no other page to open. */

import { cellAtIndex, cellIndex, loadBlock, loadCells } from "./cells.js";
import { byId } from "./dom.js";
import { followRows, layerChoices, layerHref, rowsOf } from "./layers.js";
import { readHash } from "./url_state.js";

export function setupLayers(app) {
  const choices = layerChoices(app.manifest);
  app.atlas.layers = () => (choices || []).map((c) => ({ layer: c.layer, current: c.current }));
  if (!choices || !/^https?:$/.test(location.protocol)) return;
  const select = byId("layer-select");
  choices.forEach((c) => {
    const option = document.createElement("option");
    option.value = c.layer;
    option.textContent = c.layer + (c.grid ? " (" + c.grid.join(" \u00d7 ") + ")" : "");
    option.selected = c.current;
    select.appendChild(option);
  });
  byId("layer-choice").hidden = false;
  select.addEventListener("change", () => {
    const choice = choices.find((c) => c.layer === select.value);
    if (choice && !choice.current) switchLayer(app, choice);
  });
}

// The cell under the view's centre on the grid shown, its block loaded; null where no cell is kept there.
function centreCell(app, view) {
  const level = app.levels[app.current];
  if (!level || !(view.x >= 0 && view.x < 1 && view.y >= 0 && view.y < 1)) return Promise.resolve(null);
  const i = Math.floor(view.x * level.grid), j = Math.floor(view.y * level.grid);
  return loadCells(level, app.fail)
    .then(() => (cellIndex(level, i, j) < 0 ? null : loadBlock(level, i, j, app.fail).then(() => cellAtIndex(level, i, j))));
}

function switchLayer(app, choice) {
  const view = readHash(location.hash);  // the page keeps the hash current (viewer.js writeHash)
  byId("layer-select").disabled = true;
  centreCell(app, view)
    .then((cell) => followRows(app.manifest, choice, rowsOf(cell)))
    .then((centre) => { location.href = layerHref(choice, view, centre); });
}
