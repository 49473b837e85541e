/* The layer chooser's logic (model.layers: one atlas per layer of the same rows, the main one at the bundle and
 * the others under layers/<layer>/): which layers there are and where each one's page is, from the manifest's
 * `layers`; and where to look in another layer's atlas. Layouts differ between layers, so the same [0, 1] point
 * means nothing there: the chooser keeps the zoom and centres on where the rows of the cell under the current
 * centre (its examples, the same images at the same places) landed in that layer's layout, the median of their
 * coordinates, read from its layout/coords.npy by HTTP Range. No DOM: node tests it against a fake fetch. */

import { fetchOk } from "./net.js";
import { npyHeader } from "./npy.js";
import { viewHash } from "./url_state.js";

const HEADER_BYTES = 4096;
export const ROWS_FOLLOWED = 8;  // the cell's first examples, nearest its direction first

// The page's folder relative to the main bundle's: "" for the main one, "../../" for a layer's (manifest.layers.main).
function mainBase(entry) {
  const main = String(entry.main || ".").replace(/\/+$/, "");
  return /^\.\.(\/\.\.)*$/.test(main) ? main + "/" : "";
}

// A layer's folder as the manifest writes it ("." or "layers/<name>"), or null for anything else (no way up or out).
function safeFolder(folder) {
  const text = String(folder);
  if (text === ".") return "";
  return /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(text) && !text.split("/").some((p) => p === "." || p === "..") ? text + "/" : null;
}

// Every layer of this run: [{layer, base (its bundle folder, relative to this page), grid, current}], in the
// manifest's order; null for a bundle of one layer.
export function layerChoices(manifest) {
  const entry = manifest && manifest.layers;
  if (!entry || !Array.isArray(entry.bundles) || entry.bundles.length < 2) return null;
  const up = mainBase(entry);
  return entry.bundles.flatMap((b) => {
    const folder = safeFolder(b.folder);
    if (folder === null) return [];
    const current = b.layer === entry.layer;
    return [{ layer: String(b.layer), base: current ? "" : up + folder, grid: b.grid || null, current: current }];
  });
}

// Whether two manifests of one run hold the same rows in the same order (neither dropped a row the other kept).
export function sameRows(here, there) {
  const a = here && here.layers, b = there && there.layers;
  return Boolean(a && b && a.same_rows && b.same_rows && here.n_activations === there.n_activations);
}

// The row indices the chooser follows: the cell's examples, nearest its direction first.
export function rowsOf(cell, n = ROWS_FOLLOWED) {
  return ((cell && cell.examples) || []).slice(0, n).map((e) => e.row).filter((r) => Number.isInteger(r) && r >= 0);
}

// The coordinate-wise median of [x, y] points: a cell's rows mostly land together, an odd one does not pull it.
export function medianPoint(points) {
  if (!points.length) return null;
  const median = (values) => {
    const sorted = values.slice().sort((a, b) => a - b), mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  };
  return { x: median(points.map((p) => p[0])), y: median(points.map((p) => p[1])) };
}

function fetchRange(url, first, last) {
  return fetchOk(url, { headers: { Range: "bytes=" + first + "-" + last } }).then((r) => Promise.all([r.status, r.arrayBuffer()]));
}

// The [x, y] of each row in a float32 [N, 2] coords.npy (C order): its header, then 8 bytes a row by Range; a
// server that ignores Range sends the file whole, which then answers every row.
export function readCoords(url, rows) {
  return fetchRange(url, 0, HEADER_BYTES - 1).then(([status, buffer]) => {
    const head = npyHeader(buffer);
    if (!head || head.descr !== "<f4" || head.fortran || head.shape[1] !== 2) throw new Error(url + ": expected float32 [N, 2] coordinates");
    const point = (view, at) => [view.getFloat32(at, true), view.getFloat32(at + 4, true)];
    const wanted = rows.filter((r) => r < head.shape[0]);
    if (status === 200) return wanted.map((r) => point(new DataView(buffer), head.offset + r * 8));
    return Promise.all(wanted.map((r) => fetchRange(url, head.offset + r * 8, head.offset + r * 8 + 7)
      .then(([, bytes]) => point(new DataView(bytes), 0))));
  });
}

// Where the other layer's page opens: its index.html with this view's zoom, grid choice and class heatmap, centred
// on `centre` ({x, y} in its layout) where one was found, else on this view's centre; no cell selected (cells differ).
export function layerHref(choice, view, centre) {
  const at = centre || { x: view.x, y: view.y };
  const hash = viewHash({ grid: view.grid, locked: view.locked, x: at.x, y: at.y, zoom: view.zoom, selected: null, query: view.query });
  return choice.base + "index.html" + hash;
}

// The centre in the other layer's layout of the rows followed, or null where it cannot be known (other rows, a
// cell with no examples, a file that fails).
export function followRows(here, choice, rows) {
  if (!rows.length) return Promise.resolve(null);
  return fetchOk(choice.base + "manifest.json").then((r) => r.json()).then((there) => {
    if (!sameRows(here, there) || !there.coords) return null;
    return readCoords(choice.base + there.coords, rows).then(medianPoint);
  }).catch(() => null);
}
