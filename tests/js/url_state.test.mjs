// The view in the URL hash: what a link holds reopens the same grid, place, cell and heatmap.
import assert from "node:assert/strict";
import { test } from "node:test";

import { readHash, viewHash } from "../../atlas/viewer/assets/url_state.js";

test("a view written to the hash reads back the same (to the digits kept)", () => {
  const view = { grid: 40, locked: true, x: 0.123456, y: 0.98765, zoom: 3.14159, selected: { grid: 40, i: 7, j: 31 }, query: "golden retriever" };
  const hash = viewHash(view);
  assert.equal(hash, "#g=40&lock=1&x=0.1235&y=0.9877&z=3.142&cell=40%3A7%2C31&class=golden+retriever");
  assert.deepEqual(readHash(hash), { ...view, x: 0.1235, y: 0.9877, zoom: 3.142 });
});

test("an unlocked view with no cell or class leaves them out, and reads back without them", () => {
  const hash = viewHash({ grid: 2, locked: false, x: 0.5, y: 0.5, zoom: 1, selected: null, query: null });
  assert.equal(hash, "#g=2&x=0.5000&y=0.5000&z=1.000");
  assert.deepEqual(readHash(hash), { grid: 2, locked: false, x: 0.5, y: 0.5, zoom: 1, selected: null, query: null });
});

test("a class query with the hash's own separators survives the round trip", () => {
  const query = "a&b=c #1 / 50% ü";
  const view = readHash(viewHash({ grid: 4, locked: false, x: 0, y: 0, zoom: 1, selected: null, query: query }));
  assert.equal(view.query, query);
});

test("an empty or hand-edited hash asks for nothing it cannot say", () => {
  const empty = readHash("");
  assert.equal(empty.grid, null);
  assert.equal(empty.locked, false);
  assert.ok(Number.isNaN(empty.x) && Number.isNaN(empty.y) && Number.isNaN(empty.zoom));
  assert.equal(empty.selected, null);
  assert.equal(empty.query, null);
  const edited = readHash("#g=big&lock=yes&z=-&cell=4:1&class=");
  assert.equal(edited.grid, null);
  assert.equal(edited.locked, false, "only lock=1 locks");
  assert.equal(edited.selected, null, "a cell needs grid:i,j");
  assert.equal(edited.query, null);
  assert.deepEqual(readHash("cell=8:0,12").selected, { grid: 8, i: 0, j: 12 }, "the leading # is optional");
});

test("the view shown and labels turned off are kept in the hash; the defaults leave them out", () => {
  const base = { grid: 20, locked: false, x: 0.5, y: 0.5, zoom: 2, selected: null, query: null };
  assert.equal(viewHash({ ...base, show: "icons", labels: true }), "#g=20&x=0.5000&y=0.5000&z=2.000", "icons and labels on are the defaults");
  const hash = viewHash({ ...base, show: "examples", labels: false });
  assert.equal(hash, "#g=20&x=0.5000&y=0.5000&z=2.000&view=examples&labels=0");
  assert.deepEqual(readHash(hash), { ...base, show: "examples", labels: false });
  assert.equal(readHash(viewHash({ ...base, show: "both" })).show, "both");
  assert.equal(readHash("#g=20&labels=1").labels, true);
  const plain = readHash("#g=20");
  assert.ok(!("show" in plain) && !("labels" in plain), "a hash without them asks for neither");
});
