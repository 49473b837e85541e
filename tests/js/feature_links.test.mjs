// The dictionary's features as the page names and lists them (feature_links.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import { cellFeatureLine, columnMax, featureLabel, featureQuery, featureSummary } from "../../atlas/viewer/assets/feature_links.js";

test("a search or a URL names a feature by number", () => {
  assert.equal(featureQuery("feature 12"), 12);
  assert.equal(featureQuery("  Feature #3 "), 3);
  assert.equal(featureQuery("feature12"), 12);
  assert.equal(featureQuery("goldfish"), -1);
  assert.equal(featureQuery("12"), -1, "a bare number stays a class number");
  assert.equal(featureQuery("feature"), -1);
  assert.equal(featureQuery(null), -1);
  assert.equal(featureLabel(7), "feature 7");
});

test("a feature's record in words: density, its top classes, its icon's cosine", () => {
  const record = { density: 0.0125, top_classes: [{ label: "tench" }, { label: "goldfish" }, { label: "shark" }], fidelity: { cosine: 0.8312, rank: 0 } };
  assert.equal(featureSummary(record), "density 1.3% \u00b7 tench, goldfish \u00b7 icon cosine 0.83");
  assert.equal(featureSummary(record, 1), "density 1.3% \u00b7 tench \u00b7 icon cosine 0.83");
  assert.equal(featureSummary({ density: 0 }), "density 0%", "no classes, no icon: the density alone");
  assert.equal(featureSummary(undefined), "");
});

test("a cell's strongest features as one line, and a column's maximum", () => {
  const top = [{ feature: 12, activation: 0.5312, active: 1 }, { feature: 4, activation: 0.2, active: 0.5 },
    { feature: 9, activation: 0.1, active: 0.25 }, { feature: 1, activation: 0.05, active: 0.1 }];
  assert.equal(cellFeatureLine(top), "feature 12 (0.531), feature 4 (0.200), feature 9 (0.100)");
  assert.equal(cellFeatureLine(top, 1), "feature 12 (0.531)");
  assert.equal(cellFeatureLine([]), "");
  assert.equal(cellFeatureLine(undefined), "");
  assert.equal(columnMax(new Float32Array([0.5, 2, -3, 1])), 2);
  assert.equal(columnMax(new Float32Array([-1, -2])), 0);
  assert.equal(columnMax([]), 0);
});

test("a cell of the feature map counts its features, an atlas cell its activations", async () => {
  const { countText } = await import("../../atlas/viewer/assets/format.js");
  assert.equal(countText({ count: 3, features: [4, 1, 9] }), "3 dictionary features in this cell (the feature map)");
  assert.equal(countText({ count: 1, features: [4] }), "1 dictionary feature in this cell (the feature map)");
  assert.equal(countText({ count: 5 }), "average of 5 activations");
});
