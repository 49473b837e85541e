// The page's .npy parser against files numpy wrote (fixtures/make_fixtures.py) and headers built by the spec.
import assert from "node:assert/strict";
import { test } from "node:test";

import { halfColumn, halfToFloat, halvesToFloats, npyHeader, parseNpy } from "../../atlas/viewer/assets/npy.js";
import { fixture } from "./helpers.mjs";

const SPECIALS = [0, -0, 1, -2.5, 65504, 2 ** -14, 2 ** -24, 1023 * 2 ** -24, -(2 ** -24), Infinity, -Infinity, NaN, 0.333251953125];

test("float16 bit patterns decode to their IEEE 754 values", () => {
  const cases = [
    [0x0000, 0], [0x8000, -0], [0x3c00, 1], [0xc000, -2], [0x3555, 0.333251953125], [0x7bff, 65504],
    [0x0400, 2 ** -14], [0x0001, 2 ** -24], [0x03ff, 1023 * 2 ** -24], [0x8001, -(2 ** -24)],
    [0x7c00, Infinity], [0xfc00, -Infinity], [0x7e00, NaN], [0x7c01, NaN], [0xfe00, NaN]
  ];
  for (const [bits, value] of cases) assert.ok(Object.is(halfToFloat(bits), value), bits.toString(16) + " -> " + halfToFloat(bits));
});

test("a float16 file numpy wrote holds its specials: signed zero, subnormals, infinities, NaN", () => {
  const npy = parseNpy(fixture("half_specials.npy"), "<f2");
  assert.deepEqual(npy.shape, [SPECIALS.length]);
  assert.equal(npy.fortran, false);
  const values = Array.from(halvesToFloats(npy.data));
  values.forEach((v, k) => assert.ok(Object.is(v, SPECIALS[k]), k + ": " + v + " is not " + SPECIALS[k]));
});

test("a class's column reads the same from a Fortran-order file and a C-order one", () => {
  const fortran = parseNpy(fixture("attribution_fortran.npy"), "<f2"), c = parseNpy(fixture("attribution_c.npy"), "<f2");
  assert.equal(fortran.fortran, true);
  assert.equal(c.fortran, false);
  assert.deepEqual(fortran.shape, [5, 3]);
  for (let k = 0; k < 3; k++) {
    const expected = [0, 1, 2, 3, 4].map((n) => n + k / 4);
    assert.deepEqual(Array.from(halfColumn(fortran.data, fortran.shape, true, k)), expected);
    assert.deepEqual(Array.from(halfColumn(c.data, c.shape, false, k)), expected);
  }
  // Fortran order: class k's column is the k-th run of 5 words, which one Range request reads.
  assert.deepEqual(Array.from(halvesToFloats(fortran.data.subarray(5, 10))), [0.25, 1.25, 2.25, 3.25, 4.25]);
});

test("int32 cell indexes read alike from version 1 and version 2 headers", () => {
  const v1 = parseNpy(fixture("cell_index.npy"), "<i4"), v2 = parseNpy(fixture("cell_index_v2.npy"), "<i4");
  assert.deepEqual(v1.shape, [3, 3]);
  assert.deepEqual(v2.shape, [3, 3]);
  assert.deepEqual(Array.from(v1.data), [0, -1, 1, -1, 2, -1, 3, -1, -1]);
  assert.deepEqual(Array.from(v2.data), Array.from(v1.data));
  assert.equal(npyHeader(fixture("cell_index_v2.npy")).offset % 64, 0, "numpy aligns the data to 64 bytes");
});

// A .npy file as the format spec defines it: magic, version, little-endian header length, the header, data.
function npyBytes(major, header, data) {
  const text = new TextEncoder().encode(header);
  const prefix = major === 1 ? 10 : 12;
  const bytes = new Uint8Array(prefix + text.length + data.length);
  bytes.set([0x93, ..."NUMPY"].map((c) => (typeof c === "string" ? c.charCodeAt(0) : c)));
  bytes[6] = major;
  const view = new DataView(bytes.buffer);
  if (major === 1) view.setUint16(8, text.length, true); else view.setUint32(8, text.length, true);
  bytes.set(text, prefix);
  bytes.set(data, prefix + text.length);
  return bytes.buffer;
}

test("a version 3 header (utf-8, 4-byte length) and a 0-d shape parse", () => {
  const header = "{'descr': '<f2', 'fortran_order': False, 'shape': (), }    \n";
  const buffer = npyBytes(3, header, [0x00, 0x3c]);
  assert.deepEqual(npyHeader(buffer), { descr: "<f2", fortran: false, shape: [], offset: 12 + header.length });
  assert.equal(halfToFloat(parseNpy(buffer, "<f2").data[0]), 1);
});

test("a header cut short reads as null, so the caller can ask for more", () => {
  const whole = fixture("cell_index.npy");
  assert.equal(npyHeader(whole.slice(0, 40)), null);
  assert.throws(() => parseNpy(whole.slice(0, 40), "<i4"), /truncated \.npy file/);
});

test("what is not the dtype asked for, or not .npy at all, is refused with a reason", () => {
  assert.throws(() => parseNpy(fixture("float64.npy"), "<i4"), /expected <i4 data, got <f8/);
  assert.throws(() => npyHeader(new TextEncoder().encode("<!doctype html><p>404</p>").buffer), /not a \.npy file/);
  assert.throws(() => npyHeader(new ArrayBuffer(4)), /not a \.npy file/);
});
