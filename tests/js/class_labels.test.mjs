// Where class labels go: one per region of cells sharing a top class, at its middle, never crowding each other.
import assert from "node:assert/strict";
import { test } from "node:test";

import { labelText, labelsReadable, placeLabels } from "../../atlas/viewer/assets/class_labels.js";

// A grid of top classes from rows of letters ("." = no cell).
function cellsOf(rows, names = { a: "tabby cat", b: "espresso", c: "rocket", d: "astronaut" }) {
  const cells = [];
  rows.forEach((row, j) => [...row].forEach((ch, i) => { if (ch !== ".") cells.push({ i: i, j: j, label: names[ch] }); }));
  return cells;
}

test("each connected region of one top class gets one label, at the cell nearest its middle", () => {
  const cells = cellsOf([
    "aaabb",
    "aaabb",
    "aaabb",
    "ccccc",
  ]);
  const placed = placeLabels(cells, 120);
  assert.deepEqual(placed.map((p) => [p.label, p.i, p.j, p.size]), [
    ["tabby cat", 1, 1, 9],
    ["rocket", 2, 3, 5],
    ["espresso", 3, 1, 6],
  ].sort((x, y) => y[3] - x[3] || x[0].localeCompare(y[0])));
});

test("the same class in two separate regions is labelled in each; diagonal cells are not connected", () => {
  const placed = placeLabels(cellsOf([
    "a...a",
    ".....",
    ".....",
    "a....",
  ]), 200);
  assert.equal(placed.length, 3);
  assert.ok(placed.every((p) => p.label === "tabby cat" && p.size === 1));
  assert.equal(placeLabels(cellsOf(["ab", "ba"]), 200).length, 4, "a checkerboard at large cells: four regions, room for all");
});

test("labels never come within half a cell of each other: the larger region keeps its label", () => {
  // Small cells: every cell a region of its own would cover the icons; only well-spaced labels stay.
  const cells = cellsOf(["abab", "baba", "abab", "baba"]);
  const placed = placeLabels(cells, 80);
  assert.ok(placed.length > 0 && placed.length <= cells.length / 2, `${placed.length} labels for ${cells.length} cells`);
  const box = (p) => { const w = 7 * p.text.length + 8, x = (p.i + 0.5) * 80, y = (p.j + 0.5) * 80; return [x - w / 2, x + w / 2, y - 9, y + 9]; };
  for (const p of placed) {
    for (const q of placed) {
      if (p === q) continue;
      const [a, b] = [box(p), box(q)];
      const gap = Math.max(b[0] - a[1], a[0] - b[1], b[2] - a[3], a[2] - b[3]);
      assert.ok(gap >= 40, `${p.label} at ${p.i},${p.j} and ${q.label} at ${q.i},${q.j}: ${gap} px apart`);
    }
  }
  assert.deepEqual(placeLabels(cells, 40), [], "small cells: lone cells get no label");
  const big = placeLabels(cellsOf(["aaaa", "aaaa", "bbbc", "bbbc"]), 40, () => 150);
  assert.deepEqual(big.map((p) => p.label), ["tabby cat", "espresso"], "the lone-column region loses to the larger ones next to it");
});

test("labels show once zoomed in with cells large enough, and long class names are shortened", () => {
  assert.equal(labelsReadable(1, 300), false, "the whole-atlas view stays a picture");
  assert.equal(labelsReadable(2, 20), false, "cells too small to read a label over");
  assert.equal(labelsReadable(2, 60), true);
  assert.equal(labelText("tabby cat"), "tabby cat");
  const long = labelText("a very long class name that keeps going");
  assert.equal(long.length, 24);
  assert.ok(long.endsWith("\u2026"));
  assert.deepEqual(placeLabels([], 100), []);
});
