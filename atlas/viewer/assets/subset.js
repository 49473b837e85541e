/* What a bundle is, from its manifest: the whole atlas, a class atlas or a comparison of two classes
 * (sub-bundles that `atlas classes` writes). No DOM: node tests it. */

import { fmt } from "./format.js";

export function subsetKind(manifest) {
  return manifest && manifest.subset ? manifest.subset.kind : null;
}

// The class a class atlas is of, or null.
export function subsetClassIndex(manifest) {
  return subsetKind(manifest) === "class" && manifest.subset.classes && manifest.subset.classes.length ? manifest.subset.classes[0].index : null;
}

// The two classes of a comparison: a (right) and b (left), from the manifest's pair, else the subset's classes.
export function pairClasses(manifest) {
  if (subsetKind(manifest) !== "pair") return null;
  const pair = manifest.pair || {}, classes = manifest.subset.classes || [];
  const a = pair.a || classes[0], b = pair.b || classes[1];
  return a && b ? { a: a, b: b } : null;
}

// The parent atlas's folder relative to this page ("../../"); only ".." steps are taken from the manifest.
export function parentBase(manifest) {
  const parent = String(manifest.subset.parent || "../..").replace(/\/+$/, "");
  return /^\.\.(\/\.\.)*$/.test(parent) ? parent + "/" : "../../";
}

// Where the bundle was written, as its manifest records it: the honest hint for RUN_DIR (it may have moved since).
export function writtenTo(manifest) {
  const out = manifest.config && manifest.config.output;
  if (!out || typeof out.dir !== "string" || !out.dir) return null;
  const dir = out.dir.replace(/\/+$/, "");
  if (manifest.subset) return dir.indexOf("/") >= 0 ? dir.replace(/\/[^\/]*$/, "") : null;  // <parent>/classes -> <parent>
  return dir + "/" + (out.name || manifest.name || "");
}

// What column i of a comparison's g columns says: the range of (attribution a - attribution b) it holds.
export function pairColumnText(manifest, i, g) {
  const pair = pairClasses(manifest), scale = manifest.pair && manifest.pair.scale;
  if (!pair || !isFinite(scale) || !(g > 1)) return "";
  const lo = (2 * i / g - 1) * scale, hi = (2 * (i + 1) / g - 1) * scale, mid = (lo + hi) / 2;
  const range = i === 0 ? "below " + fmt(hi, 2) : i === g - 1 ? "above " + fmt(lo, 2) : fmt(lo, 2) + " to " + fmt(hi, 2);
  const side = mid > 1e-9 ? "favours " + pair.a.name : mid < -1e-9 ? "favours " + pair.b.name : "between the two";
  return side + " (attribution " + pair.a.name + " \u2212 " + pair.b.name + ": " + range + ")";
}
