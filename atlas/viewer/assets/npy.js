/* .npy files as numpy writes them (format versions 1 to 3) and float16 decoding: the bundle's cell index
 * (int32) and attribution (float16) are read in the browser without a numpy port. No DOM: node tests it. */

// One IEEE 754 half-precision value (as its 16 bits) to a number; JavaScript has no float16 array to do it.
export function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 31, fraction = h & 1023;
  if (exponent === 0) return sign * fraction * Math.pow(2, -24);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * Math.pow(2, exponent - 15);
}

// The header of a .npy file, or null when the bytes read stop inside it (the page reads headers by Range).
export function npyHeader(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 10 || bytes[0] !== 0x93 || String.fromCharCode.apply(null, bytes.slice(1, 6)) !== "NUMPY") throw new Error("not a .npy file");
  const major = bytes[6];
  const view = new DataView(buffer);
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  if (bytes.length < start + headerLength) return null;
  const header = new TextDecoder().decode(bytes.slice(start, start + headerLength));
  return {
    descr: /'descr':\s*'([^']+)'/.exec(header)[1],
    fortran: /'fortran_order':\s*True/.test(header),
    shape: /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number),
    offset: start + headerLength
  };
}

// A whole .npy file of the one dtype expected: int32 ("<i4") as numbers, float16 ("<f2") as its raw 16-bit words.
export function parseNpy(buffer, descr) {
  const head = npyHeader(buffer);
  if (!head) throw new Error("truncated .npy file");
  if (head.descr !== descr) throw new Error("expected " + descr + " data, got " + head.descr);
  const Kind = descr === "<f2" ? Uint16Array : Int32Array;
  return { shape: head.shape, fortran: head.fortran, data: new Kind(buffer, head.offset) };
}

// Column k of a [rows, columns] float16 array (its raw words), in either memory order.
export function halfColumn(words, shape, fortran, k) {
  const n = shape[0], columns = shape[1], values = new Float32Array(n);
  for (let c = 0; c < n; c++) values[c] = halfToFloat(fortran ? words[k * n + c] : words[c * columns + k]);
  return values;
}

// Float16 words read on their own (one contiguous column fetched by Range) as numbers.
export function halvesToFloats(words) {
  const values = new Float32Array(words.length);
  for (let c = 0; c < words.length; c++) values[c] = halfToFloat(words[c]);
  return values;
}
