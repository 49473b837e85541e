// The views a bundle offers (icons, examples, both), where each grid's layer of a view is, and the key's cycle.
import assert from "node:assert/strict";
import { test } from "node:test";

import { availableViews, itemIndex, knownView, nextView, viewSource } from "../../atlas/viewer/assets/views.js";

const level = (grid) => ({ grid: grid, dzi: `tiles/${grid}.dzi`, views: { examples: `tiles/examples/${grid}.dzi`, both: `tiles/both/${grid}.dzi` } });

test("a bundle whose every grid has the other pyramids offers all three views, each grid's own", () => {
  const levels = [level(10), level(20)];
  assert.deepEqual(availableViews(levels), ["icons", "examples", "both"]);
  assert.equal(viewSource(levels[1], "icons"), "tiles/20.dzi");
  assert.equal(viewSource(levels[1], "examples"), "tiles/examples/20.dzi");
  assert.equal(viewSource(levels[0], "both"), "tiles/both/10.dzi");
});

test("a bundle tiled before the examples view, or with a grid missing one, offers the icons alone", () => {
  assert.deepEqual(availableViews([{ grid: 10, dzi: "tiles/10.dzi" }]), ["icons"]);
  assert.deepEqual(availableViews([level(10), { grid: 20, dzi: "tiles/20.dzi" }]), ["icons"]);
  assert.deepEqual(availableViews([{ ...level(10), views: { examples: "tiles/examples/10.dzi" } }]), ["icons"]);
  assert.deepEqual(availableViews([]), ["icons"]);
  assert.equal(knownView(["icons"], "examples"), "icons", "a link asking for examples opens an old bundle's icons");
  assert.equal(knownView(["icons", "examples", "both"], "both"), "both");
  assert.equal(knownView(["icons", "examples", "both"], "nonsense"), "icons");
});

test("the key cycles icons, examples, both, and back", () => {
  const views = ["icons", "examples", "both"];
  assert.deepEqual([nextView(views, "icons"), nextView(views, "examples"), nextView(views, "both")], ["examples", "both", "icons"]);
  assert.equal(nextView(["icons"], "icons"), "icons");
});

test("each view's layers follow the icons', coarsest first, so every index is distinct", () => {
  const indices = [0, 1, 2].flatMap((v) => [0, 1, 2, 3].map((k) => itemIndex(4, k, v)));
  assert.deepEqual(indices, [...Array(12).keys()]);
  assert.equal(itemIndex(4, 1, 2), 9);
});
