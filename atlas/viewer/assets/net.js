/* fetch that fails on an HTTP error status, so a missing bundle file surfaces as one error with its URL. */

export function fetchOk(url, init) {
  return fetch(url, init).then((r) => { if (!r.ok) throw new Error(url + ": HTTP " + r.status); return r; });
}
