// The rest of the page's logic that needs no browser: class names, what a sub-bundle is, the grid for a zoom, formats.
import assert from "node:assert/strict";
import { test } from "node:test";

import { classArgument, classCount, classLabel, findClass, pickerItems } from "../../atlas/viewer/assets/classes.js";
import { escapeHtml, fmt, percent, rowsText } from "../../atlas/viewer/assets/format.js";
import { SWITCH, emptyLevels, gridForZoom, levelOf, maxZoom, tiledLevels } from "../../atlas/viewer/assets/grids.js";
import { pairClasses, pairColumnText, parentBase, subsetClassIndex, subsetKind, writtenTo } from "../../atlas/viewer/assets/subset.js";

const LABELS = ["tench", "goldfish", "great white shark", "tiger shark", "Goldfish"];

test("a search finds the exact label first, then a label containing it, then a class number", () => {
  assert.equal(findClass("Goldfish", LABELS, 5), 1, "exact, ignoring case: the first of the two");
  assert.equal(findClass("  SHARK ", LABELS, 5), 2);
  assert.equal(findClass("3", LABELS, 5), 3);
  assert.equal(findClass("class 4", LABELS, 5), 4);
  assert.equal(findClass("class 5", LABELS, 5), -1, "past the last class");
  assert.equal(findClass("whale", LABELS, 5), -1);
  assert.equal(findClass("   ", LABELS, 5), -1);
  assert.equal(findClass("class 7", null, 10), 7, "a model without labels: classes by number");
  assert.equal(classLabel(null, 7), "class 7");
  assert.equal(classCount(null, [{ grid: 2 }, { grid: 4, attributionShape: [9, 10] }]), 10);
  assert.equal(classCount(LABELS, []), 5);
});

test("the picker lists built class atlases first, then classes by rows, then by index", () => {
  const index = { classes: [
    { index: 0, name: "tench", rows: 3 }, { index: 1, name: "goldfish", rows: 40, folder: "1-goldfish" },
    { index: 2, name: "shark", rows: 40 }, { index: 3, name: "ray", rows: 80 }, { index: 4, name: "eel", rows: 3 }
  ] };
  assert.deepEqual(pickerItems(index, LABELS).map((c) => c.index), [1, 3, 2, 0, 4]);
  assert.deepEqual(pickerItems(null, ["a", "b"]), [{ index: 0, name: "a", rows: null, folder: null }, { index: 1, name: "b", rows: null, folder: null }]);
  assert.deepEqual(pickerItems(null, null), []);
});

test("a class is given to atlas classes quoted for a shell, or by index when its name is not unique", () => {
  const names = ["tench", "crane", "crane", "it's", "say \"hi\""];
  assert.equal(classArgument({ index: 0, name: "tench" }, names), "\"tench\"");
  assert.equal(classArgument({ index: 2, name: "crane" }, names), "2");
  assert.equal(classArgument({ index: 3, name: "it's" }, names), "\"it's\"");
  assert.equal(classArgument({ index: 4, name: "say \"hi\"" }, names), "'say \"hi\"'");
  assert.equal(classArgument({ index: 5, name: "a'b$" }, ["a'b$"]), "'a'\\''b$'");
});

test("a sub-bundle's manifest says what it is and where its parent is", () => {
  const pair = { subset: { kind: "pair", parent: "../../", classes: [{ index: 1, name: "a1" }, { index: 2, name: "b2" }] }, pair: { scale: 2 } };
  assert.equal(subsetKind(pair), "pair");
  assert.equal(subsetKind({}), null);
  assert.deepEqual(pairClasses(pair), { a: { index: 1, name: "a1" }, b: { index: 2, name: "b2" } });
  assert.equal(pairClasses({ subset: { kind: "class", classes: [] } }), null);
  assert.equal(subsetClassIndex({ subset: { kind: "class", classes: [{ index: 7, name: "x" }] } }), 7);
  assert.equal(subsetClassIndex(pair), null);
  assert.equal(parentBase(pair), "../../");
  assert.equal(parentBase({ subset: { parent: "../../.." } }), "../../../");
  assert.equal(parentBase({ subset: { parent: "https://elsewhere.example/" } }), "../../", "only .. steps are taken");
  assert.equal(parentBase({ subset: {} }), "../../");
});

test("a comparison's column says which class it favours and by how much", () => {
  const m = { subset: { kind: "pair", classes: [{ name: "cat" }, { name: "dog" }] }, pair: { scale: 2 } };
  assert.equal(pairColumnText(m, 0, 4), "favours dog (attribution cat \u2212 dog: below -1.00)");
  assert.equal(pairColumnText(m, 2, 4), "favours cat (attribution cat \u2212 dog: 0.00 to 1.00)");
  assert.equal(pairColumnText(m, 3, 4), "favours cat (attribution cat \u2212 dog: above 1.00)");
  assert.equal(pairColumnText(m, 1, 3), "between the two (attribution cat \u2212 dog: -0.67 to 0.67)");
  assert.equal(pairColumnText({ ...m, pair: {} }, 0, 4), "", "no scale: nothing to say");
  assert.equal(pairColumnText({}, 0, 4), "");
});

test("where the bundle was written is the hint for RUN_DIR; a sub-bundle points at its parent", () => {
  assert.equal(writtenTo({ name: "photos", config: { output: { dir: "/runs/" } } }), "/runs/photos");
  assert.equal(writtenTo({ config: { output: { dir: "/runs", name: "x" } } }), "/runs/x");
  assert.equal(writtenTo({ subset: {}, config: { output: { dir: "/runs/photos/classes" } } }), "/runs/photos");
  assert.equal(writtenTo({ subset: {}, config: { output: { dir: "classes" } } }), null);
  assert.equal(writtenTo({ config: {} }), null);
});

test("the grid shown switches to a finer one once its cells would be SWITCH times the coarsest's at home", () => {
  const m = { levels: [{ grid: 40, dzi: "b" }, { grid: 10, dzi: "a" }, { grid: 20, n_cells: 0 }, { grid: 80, dzi: "c" }] };
  const levels = tiledLevels(m);
  assert.deepEqual(levels.map((l) => l.grid), [10, 40, 80]);
  assert.deepEqual(emptyLevels(m).map((l) => l.grid), [20]);
  assert.equal(levelOf(levels, 40).dzi, "b");
  assert.equal(levelOf(levels, 20), undefined, "an empty grid has no layer");
  assert.equal(gridForZoom(levels, 1), 0);
  assert.equal(gridForZoom(levels, 4 * SWITCH - 1e-9), 0);
  assert.equal(gridForZoom(levels, 4 * SWITCH), 1);
  assert.equal(gridForZoom(levels, 8 * SWITCH), 2);
  assert.equal(gridForZoom(levels.slice(0, 1), 100), 0);
  // The deepest zoom reaches every grid with room to spare, and 4 screen pixels per canvas pixel of the finest.
  assert.equal(maxZoom(levels, 1000, 1), Math.max(4 * 1024 / 1000, 8 * 2 / SWITCH));
  assert.equal(maxZoom([{ grid: 10, canvas_px: 100000 }], 1000, 1), 400);
});

test("numbers and bundle text are written as the page shows them", () => {
  assert.equal(fmt(0.12345), "0.123");
  assert.equal(fmt(0.12345, 2), "0.12");
  assert.equal(fmt(0), "0.000");
  assert.equal(fmt(0.0001), "1.00e-4");
  assert.equal(fmt(123456), "1.23e+5");
  assert.equal(fmt(NaN), "\u2013");
  assert.equal(fmt(undefined), "\u2013");
  assert.equal(percent(0), "0%");
  assert.equal(percent(1), "100%");
  assert.equal(percent(0.12345), "12.3%");
  assert.equal(percent(null), "\u2013");
  assert.equal(rowsText(1), "1 row");
  assert.equal(rowsText(null), "");
  assert.equal(escapeHtml("<a href=\"x\">it's & </a>"), "&lt;a href=&quot;x&quot;&gt;it&#39;s &amp; &lt;/a&gt;");
});
