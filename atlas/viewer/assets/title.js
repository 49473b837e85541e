/* The page's title: the atlas's name, model and layer, or what a sub-bundle of `atlas classes` is (a class
 * atlas or a comparison), with its way back to the parent atlas (#back). */

import { byId } from "./dom.js";
import { escapeHtml } from "./format.js";
import { pairClasses, parentBase } from "./subset.js";

export function showTitle(m) {
  const detail = [m.model, m.layer].filter(Boolean).join(" \u00b7 ");
  let title = [m.name, detail].filter(Boolean).join(" \u00b7 ") || "Activation atlas";
  if (m.subset) {
    const pair = pairClasses(m), names = (m.subset.classes || []).map((c) => c.name);
    const what = m.subset.kind === "features" ? "Feature map: " + m.subset.features + " dictionary features"
      : pair ? "Comparison: " + pair.a.name + " vs " + pair.b.name : "Class atlas: " + (names.join(", ") || m.name);
    byId("title").innerHTML = escapeHtml(what) + (detail ? " <span class=\"muted\">\u00b7 " + escapeHtml(detail) + "</span>" : "");
    byId("title").title = what + (detail ? " \u00b7 " + detail : "");
    const back = byId("back");
    back.href = parentBase(m) + "index.html";
    back.hidden = false;
    title = what;
  } else {
    byId("title").textContent = title;
  }
  document.title = title + " \u2014 activation atlas";
}
