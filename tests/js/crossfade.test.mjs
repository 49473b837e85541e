// The cross-fade between grids: only the layer on top animates, over an opaque one, so the screen blends the two.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ease, levelOpacities } from "../../atlas/viewer/assets/crossfade.js";

test("a settled view draws the grid shown over its coarser backdrop, nothing else", () => {
  assert.deepEqual(levelOpacities(4, 2, -1, 0), [0, 1, 1, 0]);
  assert.deepEqual(levelOpacities(4, 0, -1, 0.5), [1, 0, 0, 0]);
  assert.deepEqual(levelOpacities(3, 1, 1, 0.3), [1, 1, 0], "no change of grid, no fade");
});

test("zooming in, the finer grid fades in over the coarser, which stays opaque", () => {
  assert.deepEqual(levelOpacities(3, 1, 0, 0), [1, 0, 0]);
  assert.deepEqual(levelOpacities(3, 1, 0, 0.25), [1, 0.25, 0]);
  assert.deepEqual(levelOpacities(3, 1, 0, 1), [1, 1, 0]);
  // Two grids at once: both finer grids come in together over what was shown.
  assert.deepEqual(levelOpacities(4, 3, 1, 0.5), [1, 1, 0.5, 0.5]);
  assert.deepEqual(levelOpacities(4, 3, 1, 1), [0, 0, 1, 1], "once done, the grids below the backdrop go");
});

test("zooming out, the coarser grid is there at once and the finer fades out over it", () => {
  assert.deepEqual(levelOpacities(3, 0, 1, 0), [1, 1, 0]);
  assert.deepEqual(levelOpacities(3, 0, 1, 0.75), [1, 0.25, 0]);
  assert.deepEqual(levelOpacities(3, 0, 2, 0.5), [1, 0.5, 0.5]);
  assert.deepEqual(levelOpacities(3, 0, 2, 1), [1, 0, 0]);
});

test("every opacity of a fade stays in [0, 1], and the easing starts and ends flat", () => {
  for (let t = 0; t <= 1; t += 0.1) {
    for (const o of [...levelOpacities(5, 4, 1, ease(t)), ...levelOpacities(5, 0, 3, ease(t))]) assert.ok(o >= 0 && o <= 1);
  }
  assert.equal(ease(0), 0);
  assert.equal(ease(1), 1);
  assert.equal(ease(0.5), 0.5);
  assert.equal(ease(-1), 0);
  assert.equal(ease(2), 1);
  assert.ok(ease(0.05) < 0.05 && ease(0.95) > 0.95);
});
