// The layer chooser's logic: the layers a manifest lists and where each page is, and where to look in another
// layer's atlas (the median of the followed rows' coordinates, read by Range from its coords.npy).
import assert from "node:assert/strict";
import { test } from "node:test";

import { followRows, layerChoices, layerHref, medianPoint, readCoords, rowsOf, sameRows } from "../../atlas/viewer/assets/layers.js";
import { serve } from "./helpers.mjs";

const BUNDLES = [{ layer: "blocks.4", folder: ".", grid: [7, 7] }, { layer: "blocks.2", folder: "layers/blocks.2", grid: [14, 14] }];
const MAIN = { n_activations: 5, layers: { layer: "blocks.4", main: ".", bundles: BUNDLES, same_rows: true } };
const OTHER = { n_activations: 5, coords: "layout/coords.npy", layers: { layer: "blocks.2", main: "../..", bundles: BUNDLES, same_rows: true } };

// A float32 [n, 2] .npy as numpy writes it (format 1.0, the data from byte 128).
function coordsNpy(points) {
  let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + points.length + ", 2), }";
  header += " ".repeat(128 - 10 - header.length - 1) + "\n";
  const buffer = new ArrayBuffer(10 + header.length + points.length * 8), bytes = new Uint8Array(buffer), view = new DataView(buffer);
  bytes.set([0x93, ..."NUMPY"].map((c) => (typeof c === "string" ? c.charCodeAt(0) : c)), 0);
  bytes[6] = 1;
  view.setUint16(8, header.length, true);
  bytes.set([...header].map((c) => c.charCodeAt(0)), 10);
  points.forEach((p, r) => { view.setFloat32(128 + r * 8, p[0], true); view.setFloat32(132 + r * 8, p[1], true); });
  return buffer;
}

test("the main bundle lists every layer, with the other layers' pages under layers/", () => {
  assert.deepEqual(layerChoices(MAIN), [
    { layer: "blocks.4", base: "", grid: [7, 7], current: true },
    { layer: "blocks.2", base: "layers/blocks.2/", grid: [14, 14], current: false }
  ]);
});

test("a layer's bundle reaches the main one two folders up, and its siblings through it", () => {
  const third = { layer: "blocks.5", folder: "layers/blocks.5", grid: [7, 7] };
  const choices = layerChoices({ layers: { ...OTHER.layers, bundles: [...BUNDLES, third] } });
  assert.deepEqual(choices.map((c) => [c.layer, c.base, c.current]), [
    ["blocks.4", "../../", false], ["blocks.2", "", true], ["blocks.5", "../../layers/blocks.5/", false]
  ]);
});

test("a bundle of one layer has no chooser, and a folder that leaves the run is never linked", () => {
  assert.equal(layerChoices({ layer: "blocks.4" }), null);
  assert.equal(layerChoices({ layers: { ...MAIN.layers, bundles: BUNDLES.slice(0, 1) } }), null);
  const odd = [...BUNDLES, { layer: "x", folder: "../elsewhere" }, { layer: "y", folder: "https://example.com" }];
  assert.deepEqual(layerChoices({ layers: { ...MAIN.layers, bundles: odd } }).map((c) => c.layer), ["blocks.4", "blocks.2"]);
});

test("rows are followed only between bundles of the same rows", () => {
  assert.ok(sameRows(MAIN, OTHER));
  assert.ok(!sameRows(MAIN, { ...OTHER, n_activations: 4 }));
  assert.ok(!sameRows(MAIN, { ...OTHER, layers: { ...OTHER.layers, same_rows: false } }));
  assert.ok(!sameRows({ n_activations: 5 }, OTHER));
});

test("a cell's rows are its first examples; the centre is their median, which one stray row does not move", () => {
  assert.deepEqual(rowsOf({ examples: [{ row: 3 }, { row: 0 }, { row: 9 }] }, 2), [3, 0]);
  assert.deepEqual(rowsOf(null), []);
  assert.deepEqual(medianPoint([[0.2, 0.4], [0.3, 0.5], [0.9, 0.1]]), { x: 0.3, y: 0.4 });
  assert.deepEqual(medianPoint([[0.25, 0.5], [0.75, 0.5]]), { x: 0.5, y: 0.5 });
  assert.equal(medianPoint([]), null);
});

test("coordinates are read a row at a time by Range, or from the whole file a server sends instead", async () => {
  const points = [[0.125, 0.25], [0.5, 0.75], [0.875, 0.0625], [0.375, 0.625], [1, 0]];
  const requests = serve({ "c.npy": coordsNpy(points) });
  assert.deepEqual(await readCoords("c.npy", [1, 3]), [points[1], points[3]]);
  assert.deepEqual(requests.map((r) => r.range), ["bytes=0-4095", "bytes=136-143", "bytes=152-159"]);
  serve({ "c.npy": coordsNpy(points) }, { ranges: false });
  assert.deepEqual(await readCoords("c.npy", [4, 0, 99]), [points[4], points[0]]);
});

test("switching opens the other layer's page at the same zoom, centred on where the rows landed there", async () => {
  const points = [[0.1, 0.1], [0.6, 0.7], [0.62, 0.68], [0.58, 0.72], [0.9, 0.9]];
  serve({ "layers/blocks.2/manifest.json": OTHER, "layers/blocks.2/layout/coords.npy": coordsNpy(points) });
  const choice = layerChoices(MAIN)[1];
  const centre = await followRows(MAIN, choice, [1, 2, 3]);
  assert.ok(Math.abs(centre.x - 0.6) < 1e-6 && Math.abs(centre.y - 0.7) < 1e-6, JSON.stringify(centre));
  const view = { grid: 4, locked: true, x: 0.2, y: 0.3, zoom: 2.5, query: "cat" };
  assert.equal(layerHref(choice, view, centre), "layers/blocks.2/index.html#g=4&lock=1&x=0.6000&y=0.7000&z=2.500&class=cat");
  assert.equal(layerHref(choice, view, null), "layers/blocks.2/index.html#g=4&lock=1&x=0.2000&y=0.3000&z=2.500&class=cat");
  assert.equal(await followRows(MAIN, choice, []), null);
  serve({ "layers/blocks.2/manifest.json": { ...OTHER, n_activations: 4 } });
  assert.equal(await followRows(MAIN, choice, [1]), null, "other rows: the view's own centre is kept");
});
