/* A grid's attribution.npy (float16 [cells, classes], Fortran order) read one class at a time: the header by
 * one small Range request, then one class's contiguous column by another. A server that ignores Range sends
 * the file whole (200), which is then kept. No DOM: node tests it against a fake fetch. */

import { fetchOk } from "./net.js";
import { halfColumn, halvesToFloats, npyHeader } from "./npy.js";

const HEADER_BYTES = 4096;
const COLUMNS_KEPT = 8;  // the last few classes asked for, so Enter then change reads once

function fetchRange(url, first, last) {
  return fetchOk(url, { headers: { Range: "bytes=" + first + "-" + last } })
    .then((r) => Promise.all([r.status, r.arrayBuffer()]));
}

// The level's attribution header ({descr, fortran, shape, offset}), or null where the bundle has none.
export function loadAttribution(level) {
  if (!level.attribution) return Promise.resolve(null);
  if (!level.attributionPromise) {
    level.attributionPromise = fetchRange(level.attribution, 0, HEADER_BYTES - 1).then(([status, buffer]) => {
      const head = npyHeader(buffer);
      if (!head) throw new Error(level.attribution + ": header longer than 4 KiB");
      if (head.descr !== "<f2") throw new Error("attribution: expected float16, got " + head.descr);
      level.attributionShape = head.shape;
      if (status === 200) head.whole = new Uint16Array(buffer, head.offset);
      return head;
    });
  }
  return level.attributionPromise;
}

// One class's mean attribution for every cell of the level (a Float32Array in cell order).
export function classColumn(level, head, k) {
  head.columns = head.columns || new Map();
  if (!head.columns.has(k)) {
    if (head.columns.size >= COLUMNS_KEPT) head.columns.delete(head.columns.keys().next().value);
    head.columns.set(k, readColumn(level, head, k));
  }
  return head.columns.get(k);
}

function readColumn(level, head, k) {
  if (head.whole) return Promise.resolve(halfColumn(head.whole, head.shape, head.fortran, k));
  if (!head.fortran) {  // rows of classes: no contiguous column, read it whole once
    return fetchOk(level.attribution).then((r) => r.arrayBuffer()).then((buffer) => {
      head.whole = new Uint16Array(buffer, head.offset);
      return halfColumn(head.whole, head.shape, false, k);
    });
  }
  const n = head.shape[0], first = head.offset + k * n * 2;
  return fetchRange(level.attribution, first, first + n * 2 - 1).then(([status, buffer]) => {
    if (status === 200) {
      head.whole = new Uint16Array(buffer, head.offset);
      return halfColumn(head.whole, head.shape, true, k);
    }
    return halvesToFloats(new Uint16Array(buffer));
  });
}
