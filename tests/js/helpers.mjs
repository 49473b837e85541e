// Shared by the node tests: the viewer's modules, the numpy-written fixtures, and a fetch that serves bytes.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
export const ASSETS = join(HERE, "..", "..", "atlas", "viewer", "assets");

export function asset(name) {
  return join(ASSETS, name);
}

// A fixture file's bytes as the ArrayBuffer fetch gives the page.
export function fixture(name) {
  const bytes = readFileSync(join(HERE, "fixtures", name));
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length);
}

// Installs a fetch serving files ({url: ArrayBuffer | object}) as a static server does: a single byte Range
// answered 206 unless ranges is false (then 200, whole), anything else 404. Returns the requests made.
export function serve(files, { ranges = true } = {}) {
  const requests = [];
  globalThis.fetch = async (url, init) => {
    const range = init && init.headers && init.headers.Range;
    requests.push({ url: url, range: range || null });
    if (!(url in files)) return new Response("not found", { status: 404 });
    const body = files[url];
    if (!(body instanceof ArrayBuffer)) return new Response(JSON.stringify(body), { status: 200 });
    const match = range && ranges ? /^bytes=(\d+)-(\d+)$/.exec(range) : null;
    if (!match) return new Response(body, { status: 200 });
    const last = Math.min(+match[2], body.byteLength - 1);
    return new Response(body.slice(+match[1], last + 1), { status: 206 });
  };
  return requests;
}
