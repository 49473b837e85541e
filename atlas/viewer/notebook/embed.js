/* The viewer embedded in a notebook output (atlas/viewer/inline.py): the bundle's files travel inside the page, so
 * nothing is fetched from the kernel's machine. Every way the viewer reads a file by its bundle-relative URL (fetch,
 * OpenSeadragon's XMLHttpRequest for the .dzi, an image's src) is pointed at a blob URL of the embedded bytes; a file
 * the page does not hold answers 404, as `atlas serve` would. Runs before the viewer's modules. */

(function () {
  const holder = document.getElementById("atlas-files");
  const files = JSON.parse(holder.textContent);
  holder.remove();
  const blobs = new Map();
  for (const [path, entry] of Object.entries(files)) {
    const bytes = Uint8Array.from(atob(entry.data), (c) => c.charCodeAt(0));
    blobs.set(path, URL.createObjectURL(new Blob([bytes], { type: entry.type })));
  }

  // A bundle path for a URL the viewer made ("levels/4/cells.json", "./tiles/2_files/0/0_0.jpg"); null for anything
  // absolute (a blob: or data: URL is already resolved).
  function bundlePath(url) {
    const text = String(url instanceof URL ? url.href : (url && url.url) || url);
    if (/^[a-z][a-z0-9+.-]*:/i.test(text)) return null;
    return text.split(/[?#]/)[0].replace(/^(\.\/)+/, "").replace(/^\/+/, "");
  }
  function resolved(url) {
    const path = bundlePath(url);
    if (path === null) return url;
    return blobs.get(path) || "data:,missing:" + encodeURIComponent(path);
  }

  const realFetch = window.fetch.bind(window);
  window.fetch = function (url, init) {
    const path = bundlePath(url);
    if (path === null) return realFetch(url, init);
    const blob = blobs.get(path);
    if (!blob) return Promise.resolve(new Response("not in this embedded atlas: " + path, { status: 404, statusText: "Not Found" }));
    return realFetch(blob).then((r) => new Response(r.body, { status: 200, headers: { "Content-Type": files[path].type } }));
  };

  const open = XMLHttpRequest.prototype.open;
  XMLHttpRequest.prototype.open = function (method, url, ...rest) { return open.call(this, method, resolved(url), ...rest); };

  const src = Object.getOwnPropertyDescriptor(HTMLImageElement.prototype, "src");
  Object.defineProperty(HTMLImageElement.prototype, "src", {
    get() { return src.get.call(this); },
    set(url) { src.set.call(this, resolved(url)); },
    configurable: true,
  });

  // The page's own URL is about:srcdoc: the viewer keeps its view in the hash, which such a page may not rewrite.
  const replaceState = history.replaceState.bind(history);
  history.replaceState = function (...args) { try { replaceState(...args); } catch (err) { /* the view is not kept */ } };
  window.atlasEmbedded = { files: blobs.size };
})();
