// The heatmap's reads of attribution.npy: the header, then one class's column, by HTTP Range.
import assert from "node:assert/strict";
import { test } from "node:test";

import { classColumn, loadAttribution } from "../../atlas/viewer/assets/attribution.js";
import { fixture, serve } from "./helpers.mjs";

const URL = "levels/5/attribution.npy";

function column(k) {
  return [0, 1, 2, 3, 4].map((n) => n + k / 4);
}

test("a Fortran-order file gives the header, then each class's column, with one Range request each", async () => {
  const file = fixture("attribution_fortran.npy"), requests = serve({ [URL]: file });
  const level = { attribution: URL };
  const head = await loadAttribution(level);
  assert.deepEqual(level.attributionShape, [5, 3]);
  assert.equal(head.whole, undefined, "a 206 holds only the header's bytes");
  assert.deepEqual(Array.from(await classColumn(level, head, 2)), column(2));
  assert.deepEqual(Array.from(await classColumn(level, head, 2)), column(2), "asked again: the column kept");
  assert.deepEqual(Array.from(await classColumn(level, head, 0)), column(0));
  const first = head.offset + 2 * 5 * 2;
  assert.deepEqual(requests.map((r) => r.range), ["bytes=0-4095", "bytes=" + first + "-" + (first + 9), "bytes=" + head.offset + "-" + (head.offset + 9)]);
  assert.ok(head.offset + 30 === file.byteLength);
});

test("a server that ignores Range sends the file whole once, and every column comes from it", async () => {
  const requests = serve({ [URL]: fixture("attribution_fortran.npy") }, { ranges: false });
  const level = { attribution: URL };
  const head = await loadAttribution(level);
  for (let k = 0; k < 3; k++) assert.deepEqual(Array.from(await classColumn(level, head, k)), column(k));
  assert.equal(requests.length, 1);
});

test("a C-order file has no contiguous column: it is read whole, once", async () => {
  const requests = serve({ [URL]: fixture("attribution_c.npy") });
  const level = { attribution: URL };
  const head = await loadAttribution(level);
  assert.equal(head.fortran, false);
  for (let k = 0; k < 3; k++) assert.deepEqual(Array.from(await classColumn(level, head, k)), column(k));
  assert.deepEqual(requests.map((r) => r.range), ["bytes=0-4095", null]);
});

test("no attribution in the bundle is null; a file of another dtype is an error", async () => {
  assert.equal(await loadAttribution({}), null);
  serve({ [URL]: fixture("float64.npy") });
  await assert.rejects(loadAttribution({ attribution: URL }), /attribution: expected float16, got <f8/);
  serve({});
  await assert.rejects(loadAttribution({ attribution: URL }), new RegExp(URL + ": HTTP 404"));
});

test("at most eight columns are kept; the oldest is read again", async () => {
  const big = fixture("attribution_fortran.npy"), requests = serve({ [URL]: big });
  const level = { attribution: URL };
  const head = await loadAttribution(level);
  head.shape = [1, 15];  // the same bytes seen as 1 cell x 15 classes: 15 one-word columns
  for (let k = 0; k < 9; k++) await classColumn(level, head, k);
  assert.equal(head.columns.size, 8);
  const before = requests.length;
  await classColumn(level, head, 8);
  assert.equal(requests.length, before, "kept");
  await classColumn(level, head, 0);
  assert.equal(requests.length, before + 1, "dropped, read again");
});
