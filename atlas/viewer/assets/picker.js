/* The "classes" picker: classes/index.json, read the first time the picker opens (so a bundle without class
 * atlases requests nothing it lacks); links to the class atlases and comparisons built, and the exact
 * `atlas classes` command for the others. Its state is app.picker (window.atlas.picker for tests). */

import { classArgument, pickerItems } from "./classes.js";
import { byId } from "./dom.js";
import { escapeHtml, rowsText } from "./format.js";
import { parentBase, subsetClassIndex, subsetKind, writtenTo } from "./subset.js";

const PICKER_SHOWN = 200;  // classes listed at once; the filter finds the rest

export function newPicker() {
  return { open: false, base: "", index: null, items: [], promise: null };
}

export function setupPicker(app) {
  const m = app.manifest, picker = app.picker;
  const collect = m.config && m.config.collect;
  if (collect && collect.attribution === false) return;  // no attribution: atlas classes has nothing to select by
  picker.base = m.subset ? parentBase(m) : "";
  byId("picker").hidden = false;
  byId("picker-button").addEventListener("click", () => { togglePicker(app); });
  byId("picker-filter").addEventListener("input", () => { renderPicker(app); });
  byId("picker-list").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-k]");
    if (button) showBuildCommand(app, picker.items[+button.getAttribute("data-k")]);
  });
  document.addEventListener("pointerdown", (e) => {
    if (picker.open && !byId("picker").contains(e.target)) togglePicker(app, false);
  });
  byId("picker").addEventListener("keydown", (e) => {  // also where the atlas failed to open (no other key handler)
    if (e.key === "Escape" && picker.open) { e.stopPropagation(); togglePicker(app, false); byId("picker-button").focus(); }
  });
}

// Open or close the picker (open undefined: the other way round).
export function togglePicker(app, open) {
  const picker = app.picker;
  picker.open = open === undefined ? !picker.open : open;
  byId("picker-box").hidden = !picker.open;
  byId("picker-button").setAttribute("aria-expanded", String(picker.open));
  if (!picker.open) return;
  loadClassIndex(app).then(() => {
    renderPicker(app);
    if (picker.open) byId("picker-filter").focus({ preventScroll: true });
  });
}

// classes/index.json, or null where none has been written (no class atlas built yet): the labels are listed instead.
function loadClassIndex(app) {
  const picker = app.picker;
  if (!picker.promise) {
    picker.promise = fetch(picker.base + "classes/index.json")
      .then((r) => (r.ok ? r.json() : null))
      .catch(() => null)
      .then((index) => {
        picker.index = index && Array.isArray(index.classes) ? index : null;
        picker.items = pickerItems(picker.index, app.labels);
        app.atlas.classIndexLoaded = true;
      });
  }
  return picker.promise;
}

function pickerNote(index, items) {
  const note = byId("picker-note");
  const built = items.filter((c) => c.folder).length;
  if (index) {
    note.textContent = built + " class atlas" + (built === 1 ? "" : "es") + " built. Rows: " + (index.selection || "rows whose top attribution is the class") +
      "; a class atlas needs at least " + index.min_rows + ".";
  } else if (items.length) {
    note.textContent = "No class atlas has been built for this atlas yet (there is no classes/index.json). Pick a class for the command that builds one.";
  } else {
    note.innerHTML = "No class atlas has been built for this atlas yet, and it has no class names. Build one with " +
      "<code>atlas classes RUN_DIR --class INDEX</code> (or <code>--compare A B</code>).";
  }
}

function classEntry(picker, c, k, here) {
  const rows = rowsText(c.rows);
  const count = rows ? " <span class=\"rows\">" + rows + "</span>" : "";
  if (c.folder) {
    const current = c.index === here;
    return "<li class=\"built\"><a href=\"" + escapeHtml(picker.base + c.folder + "/index.html") + "\"" + (current ? " aria-current=\"page\"" : "") +
      " data-index=\"" + c.index + "\" title=\"open its class atlas\">" + escapeHtml(c.name) + (current ? " <span class=\"muted\">(this page)</span>" : "") + "</a>" +
      "<span class=\"badge\">atlas</span>" + count + "</li>";
  }
  return "<li><button type=\"button\" data-k=\"" + k + "\" data-index=\"" + c.index + "\" title=\"not built yet: show the command that builds it\">" +
    escapeHtml(c.name) + "</button>" + count + "</li>";
}

function renderPicker(app) {
  const picker = app.picker, index = picker.index, items = picker.items;
  pickerNote(index, items);
  renderPairs(app, index);
  const query = byId("picker-filter").value.trim().toLowerCase();
  const matching = [];
  items.forEach((c, k) => {
    if (!query || c.name.toLowerCase().indexOf(query) >= 0 || String(c.index) === query) matching.push(k);
  });
  const here = subsetClassIndex(app.manifest);
  byId("picker-list").innerHTML = matching.slice(0, PICKER_SHOWN).map((k) => classEntry(picker, items[k], k, here)).join("");
  byId("picker-classes-title").hidden = !items.length;
  const more = byId("picker-more");
  more.hidden = matching.length <= PICKER_SHOWN && (matching.length > 0 || !items.length);
  more.textContent = matching.length ? (matching.length - PICKER_SHOWN) + " more: type to filter." : "No class matches \u201c" + query + "\u201d.";
}

function renderPairs(app, index) {
  const pairs = index && Array.isArray(index.pairs) ? index.pairs.filter((p) => p.a && p.b && p.folder) : [];
  const here = subsetKind(app.manifest) === "pair" ? location.pathname.replace(/index\.html$/, "") : null;
  byId("pair-list").innerHTML = pairs.map((p) => {
    const href = app.picker.base + p.folder + "/index.html";
    const current = here && new URL(href, location.href).pathname.replace(/index\.html$/, "") === here;
    return "<li><a href=\"" + escapeHtml(href) + "\"" + (current ? " aria-current=\"page\"" : "") + ">" + escapeHtml(p.a.name) + " vs " + escapeHtml(p.b.name) +
      (current ? " <span class=\"muted\">(this page)</span>" : "") + "</a>" + (p.patch ? " <span class=\"rows\">patch test</span>" : "") + "</li>";
  }).join("") || "<li class=\"muted empty\">None built yet: <code>atlas classes RUN_DIR --compare A B</code></li>";
  byId("picker-pairs").hidden = false;
}

function showBuildCommand(app, item) {
  if (!item) return;
  const picker = app.picker, manifest = app.manifest;
  const names = app.labels || picker.items.map((c) => c.name);
  const command = "atlas classes RUN_DIR --class " + classArgument(item, names);
  const index = picker.index;
  let few = "";
  if (index && item.rows !== null && item.rows < index.min_rows) {
    few = "<p class=\"hint\">Only " + rowsText(item.rows) + " ha" + (item.rows === 1 ? "s" : "ve") + " it as their top attribution, and a class atlas needs " +
      "<code>classes.min_rows</code> = " + index.min_rows + ": add " +
      (item.rows > 0 ? "<code>--set classes.min_rows=" + item.rows + "</code>, or " : "") +
      "<code>--set classes.select=top_k</code> (its <code>classes.top_k</code> best rows instead).</p>";
  }
  const dir = writtenTo(manifest);
  const box = byId("picker-command");
  box.innerHTML = "<p>No class atlas of <b>" + escapeHtml(item.name) + "</b> yet" + (item.rows !== null ? " (" + rowsText(item.rows) + ")" : "") +
    ". Build it with:</p><code class=\"command\">" + escapeHtml(command) + "</code>" + few +
    "<p class=\"hint\">RUN_DIR: " + (manifest.subset ? "the parent atlas's folder" : "this atlas's folder") + ", the one given to <code>atlas serve</code>" +
    (dir ? " (it was written to <code>" + escapeHtml(dir) + "</code>)" : "") + ". Then reload this page.</p>";
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
  app.atlas.lastCommand = command;
}
