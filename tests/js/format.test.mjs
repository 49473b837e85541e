// The counts the hover label and the side panel write for a cell.
import assert from "node:assert/strict";
import { test } from "node:test";

import { countText, exampleWhere } from "../../atlas/viewer/assets/format.js";

test("a cell's count names its class-token rows only where it has any", () => {
  assert.equal(countText({ count: 1 }), "average of 1 activation");
  assert.equal(countText({ count: 7, class_tokens: 0 }), "average of 7 activations");
  assert.equal(countText({ count: 7, class_tokens: 1 }), "average of 7 activations (1 class token)");
  assert.equal(countText({ count: 9, class_tokens: 3 }), "average of 9 activations (3 class tokens)");
});

test("a class-token example says it is the whole image, a position's example where it was read", () => {
  assert.equal(exampleWhere({ image_id: 3, y: 2, x: 5 }), " at (2, 5)");
  assert.equal(exampleWhere({ image_id: 3, y: -1, x: -1 }), ", its class token (the whole image)");
});
