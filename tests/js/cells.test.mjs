// A grid's cells as the page finds them: the cell index, blocks of cells, and older bundles' whole cells.json.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  blockOf, blockUrl, blocksToFetch, cellAtIndex, cellIndex, indexFromCells, keptCells, loadBlock, loadCells
} from "../../atlas/viewer/assets/cells.js";
import { fixture, serve } from "./helpers.mjs";

// The kept cells of fixtures/cell_index.npy, in cells.json order.
const KEPT = [{ i: 0, j: 0 }, { i: 2, j: 0 }, { i: 1, j: 1 }, { i: 0, j: 2 }];

function splitLevel() {
  return {
    grid: 3, n_cells: 4, cell_index: "levels/3/cell_index.npy",
    cell_blocks: { size: 2, files: "levels/3/blocks/{bi}_{bj}.json", present: [[0, 0], [1, 0], [0, 1]] }
  };
}

function splitBundle() {
  return {
    "levels/3/cell_index.npy": fixture("cell_index.npy"),
    "levels/3/blocks/0_0.json": [{ i: 0, j: 0, n: 0, count: 5 }, { i: 1, j: 1, n: 2, count: 7 }],
    "levels/3/blocks/1_0.json": [{ i: 2, j: 0, n: 1, count: 1 }],
    "levels/3/blocks/0_1.json": [{ i: 0, j: 2, n: 3, count: 2 }]
  };
}

test("the cell index says where each kept cell is, and -1 outside the grid or where none is kept", async () => {
  const level = splitLevel(), errors = [];
  serve(splitBundle());
  assert.equal(await loadCells(level, (e) => errors.push(e)), level);
  assert.deepEqual(errors, []);
  assert.equal(level.cellsLoaded, true);
  assert.equal(level.keptCount, 4);
  KEPT.forEach((c, n) => assert.equal(cellIndex(level, c.i, c.j), n));
  for (const [i, j] of [[1, 0], [2, 2], [-1, 0], [0, -1], [3, 0], [0, 3]]) assert.equal(cellIndex(level, i, j), -1, i + "," + j);
  assert.deepEqual(keptCells(level.index, 3), [...KEPT].sort((a, b) => a.j - b.j || a.i - b.i));
  assert.deepEqual(keptCells(null, 3), []);
});

test("a cell's details come with its block, fetched once for all the cells in it", async () => {
  const level = splitLevel(), requests = serve(splitBundle()), errors = [];
  await loadCells(level, (e) => errors.push(e));
  assert.equal(cellAtIndex(level, 1, 1), null, "not before its block");
  await Promise.all([loadBlock(level, 1, 1, (e) => errors.push(e)), loadBlock(level, 0, 0, (e) => errors.push(e))]);
  assert.equal(cellAtIndex(level, 1, 1).count, 7);
  assert.equal(cellAtIndex(level, 0, 0).count, 5);
  assert.equal(cellAtIndex(level, 2, 0), null, "another block");
  assert.deepEqual(requests.map((r) => r.url), ["levels/3/cell_index.npy", "levels/3/blocks/0_0.json"]);
  assert.deepEqual(errors, []);
});

test("a block that fails is reported and asked for again next time", async () => {
  const level = splitLevel(), files = splitBundle(), errors = [];
  delete files["levels/3/blocks/1_0.json"];
  const requests = serve(files);
  await loadCells(level, (e) => errors.push(e));
  await loadBlock(level, 2, 0, (e) => errors.push(e));
  assert.deepEqual(errors, ["levels/3/blocks/1_0.json: HTTP 404"]);
  await loadBlock(level, 2, 0, (e) => errors.push(e));
  assert.equal(requests.filter((r) => r.url.endsWith("1_0.json")).length, 2);
});

test("an older bundle's cells.json is read whole and indexed the same way", async () => {
  const level = { grid: 3, cells: "levels/3/cells.json" };
  const cells = KEPT.map((c, n) => ({ ...c, count: n + 1 }));
  const requests = serve({ "levels/3/cells.json": cells });
  await loadCells(level, assert.fail);
  assert.equal(level.wholeCells, true);
  assert.equal(level.keptCount, 4);
  assert.deepEqual(Array.from(level.index), Array.from(indexFromCells(KEPT, 3)));
  assert.deepEqual(Array.from(level.index), [0, -1, 1, -1, 2, -1, 3, -1, -1]);
  assert.equal(cellAtIndex(level, 0, 2).n, 3, "a cell's position in cells.json is its n");
  assert.equal(await loadBlock(level, 0, 2, assert.fail), level);
  assert.equal(requests.length, 1, "no blocks to fetch");
});

test("a missing cell index is one error naming the file", async () => {
  const level = splitLevel(), errors = [];
  serve({});
  assert.equal(await loadCells(level, (e) => errors.push(e)), undefined);
  assert.deepEqual(errors, ["levels/3/cell_index.npy: HTTP 404"]);
  assert.equal(level.cellsLoaded, undefined);
});

test("blocks are addressed by the pattern the manifest gives", () => {
  assert.deepEqual(blockOf(16, 15, 16), { bi: 0, bj: 1, key: "0_1" });
  assert.deepEqual(blockOf(16, 47, 0), { bi: 2, bj: 0, key: "2_0" });
  assert.equal(blockUrl("levels/320/blocks/{bi}_{bj}.json", 3, 19), "levels/320/blocks/3_19.json");
});

test("the blocks to prefetch are those on screen that exist and were not asked for, up to a limit", () => {
  const level = {
    grid: 64, blocks: new Map([["1_0", null]]),
    cell_blocks: { size: 16, present: [[0, 0], [1, 0], [2, 0], [0, 1], [3, 3]] }
  };
  // The left half, 0.2 down: cells 0..32 across (the edge cell, 32, is in block 2) and 0..12 down.
  assert.deepEqual(blocksToFetch(level, { x: 0, y: 0, width: 0.5, height: 0.2 }, 64), [{ bi: 0, bj: 0 }, { bi: 2, bj: 0 }]);
  assert.deepEqual(blocksToFetch(level, { x: 0, y: 0, width: 0.5, height: 0.2 }, 1), [{ bi: 0, bj: 0 }]);
  // A view past the atlas's edges is clipped to it.
  assert.deepEqual(blocksToFetch(level, { x: -1, y: -1, width: 3, height: 3 }, 64), [{ bi: 0, bj: 0 }, { bi: 2, bj: 0 }, { bi: 0, bj: 1 }, { bi: 3, bj: 3 }]);
});
