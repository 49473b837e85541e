/* atlas viewer: every grid of the bundle as a Deep Zoom layer; zooming in shows finer grids.
 *
 * Reads manifest.json (levels with their .dzi, cell index, cell blocks and attribution.npy), opens all
 * pyramids in one OpenSeadragon world (each 1 unit wide) and shows the grid that suits the
 * zoom: the coarsest at the whole-atlas view, then each finer grid once its cells would be
 * drawn at least SWITCH times the coarsest grid's cell size at home. Hidden grids load nothing.
 * Hover: a cell's top classes, count, icon fidelity and path check. Click: side panel with the icon and the
 * dataset example patches. Class search: cells dimmed by their mean attribution to that class.
 * A grid's cells are never loaded whole: its cell index (int32 per cell position) says which cells
 * exist, the cells' details come in 16 x 16 blocks as they are shown or hovered, and the heatmap
 * reads one class's column of attribution.npy with an HTTP Range request. Bundles written before
 * the split (no cell_index in the manifest) load cells.json whole, as before.
 * The view (grid, centre, zoom, selected cell, class) lives in the URL hash.
 * atlas classes: the "classes" picker lists classes/index.json (read when the picker is first opened, so a bundle
 * without class atlases requests nothing it lacks) and links to the class atlases and comparisons built; a
 * sub-bundle (manifest.subset) names itself and links back to its parent; a comparison (subset kind "pair")
 * labels its x axis (left favours b, right favours a) and shows its patch experiment (patch.json).
 */
(function () {
  "use strict";

  var SWITCH = 0.8;
  var $ = function (id) { return document.getElementById(id); };
  var atlas = (window.atlas = { ready: false, firstTileMs: null, firstTileLoadedMs: null, errors: [], levels: [] });
  var manifest, viewer, levels = [], current = 0, locked = false, labels = null;
  var selected = null, hovered = null, heat = null, lastHash = "";

  fetch("manifest.json")
    .then(function (r) { if (!r.ok) throw new Error("manifest.json: HTTP " + r.status); return r.json(); })
    .then(start)
    .catch(function (err) {
      fail("Cannot read this atlas (" + err.message + "). Serve the run folder with `atlas serve RUN_DIR` and open the address it prints.");
    });

  function fail(text) {
    atlas.errors.push(text);
    var box = $("message");
    box.textContent = text;
    box.hidden = false;
  }

  function start(m) {
    manifest = m;
    labels = m.labels || null;
    showTitle(m);
    setupPicker(m);
    setupPair(m);
    levels = (m.levels || []).filter(function (l) { return l.dzi; }).sort(function (a, b) { return a.grid - b.grid; });
    // A grid whose cells all hold fewer than grid.min_count activations is a valid, empty result.
    var empty = (m.levels || []).filter(function (l) { return l.n_cells === 0; });
    atlas.levels = levels;
    atlas.emptyGrids = empty.map(function (l) { return l.grid; });
    if (!levels.length && empty.length) {
      fail("No grid of this atlas has any cells: every cell holds fewer than grid.min_count activations. " +
           "Lower grid.min_count or collect more images, then re-run `atlas run`.");
      return;
    }
    if (!levels.length) { fail("This bundle has no tiles yet: re-run `atlas run` to build them."); return; }
    var select = $("grid-select");
    levels.forEach(function (l) {
      var option = document.createElement("option");
      option.value = String(l.grid);
      option.textContent = l.grid + " \u00d7 " + l.grid;
      select.appendChild(option);
    });
    empty.forEach(function (l) {
      var option = document.createElement("option");
      option.value = "empty-" + l.grid;
      option.disabled = true;
      option.textContent = l.grid + " \u00d7 " + l.grid + " (no cells)";
      option.title = l.note || "no cell holds grid.min_count activations";
      select.appendChild(option);
    });
    fillClassList();

    viewer = OpenSeadragon({
      element: $("atlas"),
      drawer: "canvas",
      showNavigationControl: false,
      preload: false,
      visibilityRatio: 0.5,
      constrainDuringPan: true,
      minZoomImageRatio: 0.5,
      maxZoomPixelRatio: 4,
      preserveImageSizeOnResize: true,
      animationTime: 0.5,
      imageSmoothingEnabled: (m.tiles && m.tiles.scale > 1) ? false : true,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true, scrollToZoom: true },
      gestureSettingsTouch: { clickToZoom: false, dblClickToZoom: true, pinchToZoom: true, flickEnabled: true },
      tileSources: levels.map(function (l, k) {
        return { tileSource: l.dzi, x: 0, y: 0, width: 1, opacity: k === 0 ? 1 : 0 };
      })
    });
    atlas.viewer = viewer;

    viewer.addOnceHandler("tile-loaded", function () { atlas.firstTileLoadedMs = performance.now(); });
    viewer.addOnceHandler("tile-drawn", function () { atlas.firstTileMs = performance.now(); });
    viewer.addHandler("tile-load-failed", function (e) { atlas.errors.push("tile failed: " + (e.tile && e.tile.getUrl ? e.tile.getUrl() : "?")); });
    viewer.addHandler("open-failed", function (e) { fail("Cannot open the tiles: " + (e.message || "unknown error")); });
    viewer.addHandler("open", function () {
      setZoomLimit();
      applyHash(location.hash, true);
      atlas.ready = true;
      viewer.canvas.focus({ preventScroll: true });
    });
    viewer.addHandler("zoom", function () { if (!locked) chooseGrid(); });
    viewer.addHandler("update-viewport", drawOverlay);
    viewer.addHandler("resize", function () { setZoomLimit(); if (!locked) chooseGrid(); drawOverlay(); });
    viewer.addHandler("animation-finish", function () { updateStatus(); writeHash(); prefetchBlocks(); });
    viewer.addHandler("canvas-click", function (e) {
      if (!e.quick) return;
      e.preventDefaultAction = true;
      var hit = cellAt(e.position);
      if (hit && hit.cell) select_(hit.grid, hit.cell.i, hit.cell.j); else closePanel();
    });
    new OpenSeadragon.MouseTracker({
      element: viewer.canvas,
      moveHandler: function (e) {
        if (e.pointerType === "touch") return;
        var hit = cellAt(e.position);
        hovered = hit && (hit.cell || hit.pending) ? hit : null;
        showTip(hovered, e.originalEvent);
        drawOverlay();
      },
      leaveHandler: function () { hovered = null; showTip(null); drawOverlay(); }
    });

    $("zoom-in").addEventListener("click", function () { viewer.viewport.zoomBy(2); viewer.viewport.applyConstraints(); });
    $("zoom-out").addEventListener("click", function () { viewer.viewport.zoomBy(0.5); viewer.viewport.applyConstraints(); });
    $("home").addEventListener("click", function () { viewer.viewport.goHome(); });
    select.addEventListener("change", function () {
      locked = select.value !== "auto";
      if (locked) showGrid(levels.findIndex(function (l) { return String(l.grid) === select.value; }));
      else chooseGrid();
      writeHash();
    });
    var search = $("class-search");
    search.addEventListener("change", function () { setClass(search.value); });
    search.addEventListener("keydown", function (e) { if (e.key === "Enter") setClass(search.value); });
    search.addEventListener("input", function () { if (!search.value) setClass(""); });
    $("panel-close").addEventListener("click", closePanel);
    document.addEventListener("keydown", function (e) {
      if (e.key === "Escape") {
        if (picker.open) { togglePicker(false); $("picker-button").focus(); }
        else if (selected) closePanel();
        else if (heat) { search.value = ""; setClass(""); }
      }
      else if (e.key === "/" && !/^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName)) { e.preventDefault(); search.focus(); }
    });
    window.addEventListener("hashchange", function () { if (location.hash !== lastHash) applyHash(location.hash, false); });
  }

  /* ---- grids ---- */

  // Zoom in until the finest grid is drawn at 4 screen pixels per canvas pixel, and at least far
  // enough to show every grid with room to spare (small canvases would stop OpenSeadragon early).
  function setZoomLimit() {
    var viewport = viewer.viewport, finest = levels[levels.length - 1];
    var native = (finest.canvas_px || 1024) / Math.max(1, viewport.getContainerSize().x);
    var everyGrid = viewport.getHomeZoom() * (finest.grid / levels[0].grid) * 2 / SWITCH;
    viewport.maxZoomLevel = Math.max(4 * native, everyGrid);
  }

  // Zoom as on-screen size relative to the whole atlas fitting the window's atlas area (1 at home),
  // measured against <main>, which the side panel does not resize: opening it changes no grid.
  function homeScale() {
    var main = document.querySelector("main");
    return Math.max(1, Math.min(main.clientWidth, main.clientHeight));
  }

  function relativeZoom(target) {
    return viewer.viewport.getZoom(!target) * viewer.viewport.getContainerSize().x / homeScale();
  }

  function zoomFor(relative) {
    return relative * homeScale() / Math.max(1, viewer.viewport.getContainerSize().x);
  }

  // Decided on the zoom being animated to, so a finer grid starts loading as the zoom starts.
  function chooseGrid() {
    var rel = relativeZoom(true), pick = 0;
    for (var k = 1; k < levels.length; k++) {
      if ((levels[0].grid / levels[k].grid) * rel >= SWITCH) pick = k;
    }
    if (pick !== current || !levels[pick].cellsLoaded) showGrid(pick);
  }

  function showGrid(k) {
    if (k < 0) return;
    current = k;
    for (var n = 0; n < viewer.world.getItemCount(); n++) {
      // The grid shown, over the next coarser one as a backdrop while its own tiles arrive.
      viewer.world.getItemAt(n).setOpacity(n === k || n === k - 1 ? 1 : 0);
    }
    loadCells(levels[k]).then(function () {
      prefetchBlocks();
      updateStatus();
      if (heat) setClass(heat.query);
      drawOverlay();
    });
    if (locked) $("grid-select").value = String(levels[k].grid);
    viewer.forceRedraw();
    updateStatus();
    writeHash();
  }

  function fetchOk(url, init) {
    return fetch(url, init).then(function (r) { if (!r.ok) throw new Error(url + ": HTTP " + r.status); return r; });
  }

  function indexCells(level, cells) {
    cells.forEach(function (c, k) { if (c.n === undefined) c.n = k; level.cellMap.set(c.i + "_" + c.j, c); });
  }

  // What a grid needs before hover and the heatmap work: which cells exist, and where each is in the level's arrays.
  function loadCells(level) {
    if (!level.cellsPromise) {
      level.cellMap = new Map();
      level.blocks = new Map();
      level.cellsPromise = (level.cell_index
        ? fetchOk(level.cell_index).then(function (r) { return r.arrayBuffer(); }).then(function (buffer) {
            var npy = parseNpy(buffer, "<i4");
            level.index = npy.data;
            level.keptCount = level.n_cells;
          })
        : fetchOk(level.cells).then(function (r) { return r.json(); }).then(function (cells) {  // an older bundle
            var index = new Int32Array(level.grid * level.grid).fill(-1);
            cells.forEach(function (c, n) { index[c.j * level.grid + c.i] = n; });
            level.index = index;
            level.keptCount = cells.length;
            indexCells(level, cells);
            level.wholeCells = true;
          }))
        .then(function () { level.cellsLoaded = true; prefetchBlocks(); return level; })
        .catch(function (err) { fail(err.message); });
    }
    return level.cellsPromise;
  }

  function cellIndex(level, i, j) {
    if (!level.index || i < 0 || j < 0 || i >= level.grid || j >= level.grid) return -1;
    return level.index[j * level.grid + i];
  }

  // The block of cells holding (i, j): fetched once, then every cell in it is in level.cellMap.
  function loadBlock(level, i, j) {
    if (level.wholeCells || !level.cell_blocks) return Promise.resolve(level);
    var size = level.cell_blocks.size, bi = Math.floor(i / size), bj = Math.floor(j / size), key = bi + "_" + bj;
    if (!level.blocks.has(key)) {
      var url = level.cell_blocks.files.replace("{bi}", bi).replace("{bj}", bj);
      level.blocks.set(key, fetchOk(url).then(function (r) { return r.json(); })
        .then(function (cells) { indexCells(level, cells); return level; })
        .catch(function (err) { level.blocks.delete(key); fail(err.message); }));
    }
    return level.blocks.get(key);
  }

  // The blocks of the cells on screen, so hovering them needs no request (at most MAX_PREFETCH per view).
  var MAX_PREFETCH = 64;
  function prefetchBlocks() {
    var level = levels[current];
    if (!viewer || !level || !level.index || level.wholeCells || !level.cell_blocks) return;
    var bounds = viewer.viewport.getBounds(true), g = level.grid, size = level.cell_blocks.size;
    var i0 = Math.max(0, Math.floor(bounds.x * g)), i1 = Math.min(g - 1, Math.floor((bounds.x + bounds.width) * g));
    var j0 = Math.max(0, Math.floor(bounds.y * g)), j1 = Math.min(g - 1, Math.floor((bounds.y + bounds.height) * g));
    var present = level.presentBlocks || (level.presentBlocks = new Set(level.cell_blocks.present.map(function (b) { return b[0] + "_" + b[1]; })));
    var wanted = 0;
    for (var bj = Math.floor(j0 / size); bj <= Math.floor(j1 / size); bj++) {
      for (var bi = Math.floor(i0 / size); bi <= Math.floor(i1 / size); bi++) {
        if (!present.has(bi + "_" + bj) || level.blocks.has(bi + "_" + bj)) continue;
        if (++wanted > MAX_PREFETCH) return;
        loadBlock(level, bi * size, bj * size).then(function () { if (hovered) showTip(hovered, null); });
      }
    }
  }

  function cellAt(position) {
    var level = levels[current];
    if (!level || !level.index) return null;
    var p = viewer.viewport.viewerElementToViewportCoordinates(position);
    if (p.x < 0 || p.y < 0 || p.x >= 1 || p.y >= 1) return null;
    var i = Math.floor(p.x * level.grid), j = Math.floor(p.y * level.grid);
    if (cellIndex(level, i, j) < 0) return { grid: level.grid, i: i, j: j, cell: null };
    var cell = level.cellMap.get(i + "_" + j) || null;
    var hit = { grid: level.grid, i: i, j: j, cell: cell };
    if (!cell) {  // its block is on its way: show the tip when it lands, if the pointer is still there
      hit.pending = true;
      loadBlock(level, i, j).then(function () {
        if (hovered && hovered.grid === hit.grid && hovered.i === i && hovered.j === j) {
          hovered.cell = level.cellMap.get(i + "_" + j) || null;
          hovered.pending = false;
          showTip(hovered, null);
        }
      });
    }
    return hit;
  }

  /* ---- hover and panel ---- */

  function fmt(x, digits) {
    if (x === undefined || x === null || !isFinite(x)) return "\u2013";
    var a = Math.abs(x);
    return a !== 0 && (a < 0.001 || a >= 10000) ? x.toExponential(2) : x.toFixed(digits === undefined ? 3 : digits);
  }

  function fidelityText(cell, level) {
    if (!cell.fidelity) return "";
    return "icon fidelity: cosine " + fmt(cell.fidelity.cosine, 2) + ", rank " + (cell.fidelity.rank + 1) + " of " + level.keptCount;
  }

  // The icon against its cell's example patches at earlier layers; ranked among the cells that have examples.
  function pathText(cell, level) {
    if (!cell.path_check) return "";
    var of = level.path_check && level.path_check.cells ? level.path_check.cells : level.keptCount;
    return "path check: cosine " + fmt(cell.path_check.cosine, 2) + ", rank " + (cell.path_check.rank + 1) + " of " + of;
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (ch) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[ch];
    });
  }

  var lastPointer = null;
  function showTip(hit, event) {
    var tip = $("tip");
    if (event) lastPointer = { clientX: event.clientX, clientY: event.clientY };
    if (!hit || !hit.cell) { tip.hidden = true; return; }
    event = event || lastPointer;
    var cell = hit.cell, level = levels[current];
    var classes = (cell.top_classes || []).slice(0, 5).map(function (c) {
      return "<li>" + escapeHtml(c.label) + " <span class=\"muted\">" + fmt(c.score) + "</span></li>";
    }).join("");
    tip.innerHTML =
      "<div class=\"tip-title\">" + escapeHtml(cell.top_classes && cell.top_classes.length ? cell.top_classes[0].label : "cell " + cell.i + ", " + cell.j) + "</div>" +
      (classes ? "<ol>" + classes + "</ol>" : "") +
      "<div>average of " + cell.count + " activation" + (cell.count === 1 ? "" : "s") + "</div>" +
      "<div class=\"muted\">" + escapeHtml(fidelityText(cell, level)) + "</div>" +
      (cell.path_check ? "<div class=\"muted\">" + escapeHtml(pathText(cell, level)) + "</div>" : "") +
      (pairColumnText(hit.i, hit.grid) ? "<div class=\"muted tip-axis\">" + escapeHtml(pairColumnText(hit.i, hit.grid)) + "</div>" : "") +
      (heat && heat.values && heat.grid === level.grid ? "<div>" + escapeHtml(heat.label) + ": " + fmt(heat.values[cell.n]) + "</div>" : "");
    atlas.lastTip = { grid: hit.grid, i: hit.i, j: hit.j, at: performance.now() };
    tip.hidden = false;
    if (event) {
      var x = event.clientX + 16, y = event.clientY + 16;
      var w = tip.offsetWidth, h = tip.offsetHeight;
      if (x + w > window.innerWidth - 4) x = Math.max(4, event.clientX - w - 12);
      if (y + h > window.innerHeight - 4) y = Math.max(4, event.clientY - h - 12);
      tip.style.left = x + "px";
      tip.style.top = y + "px";
    }
  }

  function levelOf(grid) {
    return levels.find(function (l) { return l.grid === grid; });
  }

  // The whole render behind an icon cropped to what the centre position sees, and the icon under its
  // attribution transparency (render.alpha), when the bundle has them.
  function showViews(cell) {
    var box = $("panel-views");
    box.innerHTML = "";
    function add(src, caption, mask) {
      var figure = document.createElement("figure");
      var img = document.createElement("img");
      img.src = src;
      img.alt = caption;
      if (mask) img.style.maskImage = "url(\"" + mask + "\")";
      var text = document.createElement("figcaption");
      text.textContent = caption;
      figure.appendChild(img);
      figure.appendChild(text);
      box.appendChild(figure);
    }
    if (cell.view) add(cell.view, "full view (the icon is the part the centre position sees)");
    if (cell.alpha) add(cell.icon, "with attribution transparency", cell.alpha);
    box.hidden = !box.childElementCount;
  }

  function select_(grid, i, j) {
    var level = levelOf(grid);
    if (!level) return;
    loadCells(level).then(function () { return loadBlock(level, i, j); }).then(function () {
      var cell = level.cellMap && level.cellMap.get(i + "_" + j);
      if (!cell) { closePanel(); return; }
      selected = { grid: grid, i: i, j: j };
      var icon = $("panel-icon");
      icon.src = cell.icon;
      icon.classList.toggle("pixelated", !!(manifest.tiles && manifest.tiles.scale > 1));
      $("panel-title").textContent = (cell.top_classes && cell.top_classes.length ? cell.top_classes[0].label : "cell") +
        " \u2014 cell " + i + ", " + j + " of grid " + grid;
      $("panel-stats").textContent = "average of " + cell.count + " activation" + (cell.count === 1 ? "" : "s") +
        (cell.fidelity ? "; " + fidelityText(cell, level) : "") + (cell.path_check ? "; " + pathText(cell, level) : "");
      showViews(cell);
      var top = cell.top_classes || [];
      var best = top.length ? Math.max.apply(null, top.map(function (c) { return Math.abs(c.score); })) || 1 : 1;
      $("panel-classes").innerHTML = top.map(function (c) {
        return "<li>" + escapeHtml(c.label) + " <span class=\"muted\">" + fmt(c.score) + "</span>" +
          "<span class=\"bar\" style=\"width:" + Math.max(2, 100 * Math.max(0, c.score) / best).toFixed(0) + "%\"></span></li>";
      }).join("");
      var examples = (cell.examples || []).filter(function (e) { return e.patch; });
      var box = $("panel-examples");
      box.innerHTML = "";
      examples.forEach(function (e) {
        var figure = document.createElement("figure");
        var img = document.createElement("img");
        img.src = e.patch;
        img.alt = "image " + e.image_id + " at (" + e.y + ", " + e.x + ")";
        img.addEventListener("load", function () { if (img.naturalWidth < 64) img.classList.add("pixelated"); });
        var caption = document.createElement("figcaption");
        caption.textContent = "image " + e.image_id;
        figure.appendChild(img);
        figure.appendChild(caption);
        box.appendChild(figure);
      });
      if (!examples.length) box.innerHTML = "<p class=\"muted\">No example patches for this cell.</p>";
      $("panel").hidden = false;
      drawOverlay();
      writeHash();
    });
  }

  function closePanel() {
    selected = null;
    $("panel").hidden = true;
    drawOverlay();
    writeHash();
  }

  /* ---- class heatmap ---- */

  function classCount() {
    if (labels) return labels.length;
    var level = levels.find(function (l) { return l.attributionShape; });
    return level ? level.attributionShape[1] : 0;
  }

  function classLabel(k) {
    return labels && labels[k] !== undefined ? labels[k] : "class " + k;
  }

  function fillClassList() {
    var list = $("class-list");
    list.innerHTML = "";
    var n = classCount();
    for (var k = 0; k < n; k++) {
      var option = document.createElement("option");
      option.value = classLabel(k);
      list.appendChild(option);
    }
  }

  function findClass(text) {
    var q = text.trim().toLowerCase();
    if (!q) return -1;
    var n = classCount(), k;
    for (k = 0; k < n; k++) if (classLabel(k).toLowerCase() === q) return k;
    for (k = 0; k < n; k++) if (classLabel(k).toLowerCase().indexOf(q) >= 0) return k;
    var m = /^(?:class\s*)?(\d+)$/.exec(q);
    return m && (!n || +m[1] < n) ? +m[1] : -1;
  }

  function halfToFloat(h) {
    var sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 31, fraction = h & 1023;
    if (exponent === 0) return sign * fraction * Math.pow(2, -24);
    if (exponent === 31) return fraction ? NaN : sign * Infinity;
    return sign * (1 + fraction / 1024) * Math.pow(2, exponent - 15);
  }

  function npyHeader(buffer) {
    var bytes = new Uint8Array(buffer);
    if (bytes.length < 10 || bytes[0] !== 0x93 || String.fromCharCode.apply(null, bytes.slice(1, 6)) !== "NUMPY") throw new Error("not a .npy file");
    var major = bytes[6];
    var view = new DataView(buffer);
    var headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
    var start = major === 1 ? 10 : 12;
    if (bytes.length < start + headerLength) return null;  // a longer header than was read
    var header = new TextDecoder().decode(bytes.slice(start, start + headerLength));
    return {
      descr: /'descr':\s*'([^']+)'/.exec(header)[1],
      fortran: /'fortran_order':\s*True/.test(header),
      shape: /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").filter(function (s) { return s.trim(); }).map(Number),
      offset: start + headerLength
    };
  }

  function parseNpy(buffer, descr) {
    var head = npyHeader(buffer);
    if (!head) throw new Error("truncated .npy file");
    if (head.descr !== descr) throw new Error("expected " + descr + " data, got " + head.descr);
    var Kind = descr === "<f2" ? Uint16Array : Int32Array;
    return { shape: head.shape, fortran: head.fortran, data: new Kind(buffer, head.offset) };
  }

  // The attribution file's header (one small Range request); a server that ignores Range sends it whole, which is kept.
  function loadAttribution(level) {
    if (!level.attribution) return Promise.resolve(null);
    if (!level.attributionPromise) {
      level.attributionPromise = fetchOk(level.attribution, { headers: { Range: "bytes=0-4095" } })
        .then(function (r) { return Promise.all([r.status, r.arrayBuffer()]); })
        .then(function (got) {
          var head = npyHeader(got[1]);
          if (!head) throw new Error(level.attribution + ": header longer than 4 KiB");
          if (head.descr !== "<f2") throw new Error("attribution: expected float16, got " + head.descr);
          level.attributionShape = head.shape;
          if (got[0] === 200) head.whole = new Uint16Array(got[1], head.offset);
          if (!labels && !$("class-list").options.length) fillClassList();
          return head;
        });
    }
    return level.attributionPromise;
  }

  // One class's mean attribution for every cell of the level: a contiguous column of the Fortran-order file.
  function classColumn(level, head, k) {
    head.columns = head.columns || new Map();  // the last few classes asked for, so Enter then change reads once
    if (!head.columns.has(k)) {
      if (head.columns.size >= 8) head.columns.delete(head.columns.keys().next().value);
      head.columns.set(k, readColumn(level, head, k));
    }
    return head.columns.get(k);
  }

  function readColumn(level, head, k) {
    var n = head.shape[0], classes = head.shape[1];
    function column(data, fortran) {
      var values = new Float32Array(n);
      for (var c = 0; c < n; c++) values[c] = halfToFloat(fortran ? data[k * n + c] : data[c * classes + k]);
      return values;
    }
    if (head.whole) return Promise.resolve(column(head.whole, head.fortran));
    if (!head.fortran) {  // rows of classes: no contiguous column, read it whole once
      return fetchOk(level.attribution).then(function (r) { return r.arrayBuffer(); })
        .then(function (buffer) { head.whole = new Uint16Array(buffer, head.offset); return column(head.whole, false); });
    }
    var first = head.offset + k * n * 2, last = first + n * 2 - 1;
    return fetchOk(level.attribution, { headers: { Range: "bytes=" + first + "-" + last } })
      .then(function (r) { return Promise.all([r.status, r.arrayBuffer()]); })
      .then(function (got) {
        if (got[0] === 200) { head.whole = new Uint16Array(got[1], head.offset); return column(head.whole, true); }
        var values = new Float32Array(n), data = new Uint16Array(got[1]);
        for (var c = 0; c < n; c++) values[c] = halfToFloat(data[c]);
        return values;
      });
  }

  function setClass(text) {
    var level = levels[current];
    if (!text || !text.trim()) { heat = null; $("legend").hidden = true; drawOverlay(); writeHash(); return; }
    loadAttribution(level).then(function (head) {
      if (!head) { heat = null; showLegend("This atlas has no class attribution (collect.attribution was off)."); return; }
      var k = findClass(text);
      if (k < 0 || k >= head.shape[1]) { heat = null; showLegend("No class matches \u201c" + text + "\u201d."); drawOverlay(); writeHash(); return; }
      return classColumn(level, head, k).then(function (values) { return { k: k, values: values }; });
    }).then(function (found) {
      if (!found) return;
      var values = found.values, k = found.k, max = 0;
      for (var c = 0; c < values.length; c++) if (values[c] > max) max = values[c];
      heat = { query: text, k: k, label: classLabel(k), grid: level.grid, values: values, max: max };
      showLegend("");
      drawOverlay();
      writeHash();
    }).catch(function (err) { fail(err.message); });
  }

  function showLegend(problem) {
    var legend = $("legend");
    legend.hidden = false;
    if (problem) { legend.textContent = problem; return; }
    legend.innerHTML = "attribution to <b>" + escapeHtml(heat.label) + "</b>: 0<span class=\"scale\"></span>" + fmt(heat.max) +
      " <span class=\"muted\">(mean per cell, grid " + heat.grid + ")</span>";
  }

  /* ---- overlay: heatmap, hovered and selected cells ---- */

  function drawOverlay() {
    var canvas = $("overlay");
    if (!viewer || !viewer.world.getItemCount()) return;
    var ratio = window.devicePixelRatio || 1;
    var width = canvas.clientWidth, height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    var ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    var level = levels[current];
    if (!level) return;
    var g = level.grid;
    var origin = viewer.viewport.viewportToViewerElementCoordinates(new OpenSeadragon.Point(0, 0), true);
    var corner = viewer.viewport.viewportToViewerElementCoordinates(new OpenSeadragon.Point(1, 1), true);
    var cw = (corner.x - origin.x) / g, ch = (corner.y - origin.y) / g;
    if (heat && heat.grid === g && level.index) {
      var i0 = Math.max(0, Math.floor(-origin.x / cw)), i1 = Math.min(g - 1, Math.floor((width - origin.x) / cw));
      var j0 = Math.max(0, Math.floor(-origin.y / ch)), j1 = Math.min(g - 1, Math.floor((height - origin.y) / ch));
      for (var j = j0; j <= j1; j++) {
        for (var i = i0; i <= i1; i++) {
          var n = level.index[j * g + i];
          var s = n >= 0 && heat.max > 0 ? Math.max(0, Math.min(1, heat.values[n] / heat.max)) : 0;
          var x = origin.x + i * cw, y = origin.y + j * ch;
          ctx.fillStyle = "rgba(10, 10, 14, " + (0.85 * (1 - Math.sqrt(s))).toFixed(3) + ")";
          ctx.fillRect(x, y, cw + 0.5, ch + 0.5);
          if (s > 0.05 && cw > 6) {
            ctx.strokeStyle = "rgba(255, 200, 60, " + s.toFixed(3) + ")";
            ctx.lineWidth = Math.max(1, Math.min(4, cw / 20));
            ctx.strokeRect(x + ctx.lineWidth / 2, y + ctx.lineWidth / 2, cw - ctx.lineWidth, ch - ctx.lineWidth);
          }
        }
      }
    }
    if (hovered && hovered.grid === g) {
      ctx.strokeStyle = "rgba(255, 255, 255, 0.9)";
      ctx.lineWidth = 1.5;
      ctx.strokeRect(origin.x + hovered.i * cw, origin.y + hovered.j * ch, cw, ch);
    }
    if (selected) {
      var sg = selected.grid;
      var sw = (corner.x - origin.x) / sg, sh = (corner.y - origin.y) / sg;
      ctx.strokeStyle = "#f5a623";
      ctx.lineWidth = 2.5;
      ctx.strokeRect(origin.x + selected.i * sw, origin.y + selected.j * sh, sw, sh);
    }
  }

  /* ---- status and URL hash ---- */

  function updateStatus() {
    if (!viewer) return;
    var level = levels[current];
    var parts = ["grid " + level.grid + " \u00d7 " + level.grid + (locked ? " (locked)" : "")];
    if (level.cellsLoaded) parts.push(level.keptCount + " cells");
    parts.push("zoom " + relativeZoom().toFixed(1) + "\u00d7");
    if (manifest.n_activations) parts.push(manifest.n_activations.toLocaleString() + " activations from " + (manifest.n_images || 0).toLocaleString() + " images");
    parts.push("drag or arrow keys to pan \u00b7 wheel, pinch or +/\u2212 to zoom \u00b7 click a cell for examples");
    $("status").textContent = parts.join(" \u00b7 ");
  }

  function writeHash() {
    if (!viewer || !atlas.ready) return;
    var centre = viewer.viewport.getCenter();
    var params = new URLSearchParams();
    params.set("g", String(levels[current].grid));
    if (locked) params.set("lock", "1");
    params.set("x", centre.x.toFixed(4));
    params.set("y", centre.y.toFixed(4));
    params.set("z", relativeZoom(true).toFixed(3));
    if (selected) params.set("cell", selected.grid + ":" + selected.i + "," + selected.j);
    if (heat) params.set("class", heat.query);
    var hash = "#" + params.toString();
    if (hash !== location.hash) history.replaceState(null, "", hash);
    lastHash = location.hash;
  }

  function applyHash(hash, immediately) {
    var params = new URLSearchParams(hash.replace(/^#/, ""));
    var z = parseFloat(params.get("z")), x = parseFloat(params.get("x")), y = parseFloat(params.get("y"));
    if (isFinite(z) && z > 0) viewer.viewport.zoomTo(zoomFor(z), null, immediately);
    if (isFinite(x) && isFinite(y)) viewer.viewport.panTo(new OpenSeadragon.Point(x, y), immediately);
    if (immediately) viewer.viewport.applyConstraints(true);
    var g = parseInt(params.get("g"), 10);
    var k = levels.findIndex(function (l) { return l.grid === g; });
    locked = params.get("lock") === "1" && k >= 0;
    $("grid-select").value = locked ? String(g) : "auto";
    if (locked) showGrid(k); else chooseGrid();
    var cls = params.get("class");
    if (cls) { $("class-search").value = cls; setClass(cls); }
    var cell = /^(\d+):(\d+),(\d+)$/.exec(params.get("cell") || "");
    if (cell) select_(+cell[1], +cell[2], +cell[3]); else if (selected) closePanel();
  }

  /* ---- what this bundle is: the whole atlas, a class atlas or a comparison (atlas classes) ---- */

  function subsetKind() {
    return manifest && manifest.subset ? manifest.subset.kind : null;
  }

  // The two classes of a comparison: a (right) and b (left), from the manifest's pair, else the subset's classes.
  function pairClasses() {
    if (subsetKind() !== "pair") return null;
    var pair = manifest.pair || {}, classes = manifest.subset.classes || [];
    var a = pair.a || classes[0], b = pair.b || classes[1];
    return a && b ? { a: a, b: b } : null;
  }

  // The parent atlas's folder relative to this page ("../../"); only ".." steps are taken from the manifest.
  function parentBase() {
    var parent = String(manifest.subset.parent || "../..").replace(/\/+$/, "");
    return /^\.\.(\/\.\.)*$/.test(parent) ? parent + "/" : "../../";
  }

  function showTitle(m) {
    var detail = [m.model, m.layer].filter(Boolean).join(" \u00b7 ");
    var title = [m.name, detail].filter(Boolean).join(" \u00b7 ") || "Activation atlas";
    if (m.subset) {
      var pair = pairClasses(), names = (m.subset.classes || []).map(function (c) { return c.name; });
      var what = pair ? "Comparison: " + pair.a.name + " vs " + pair.b.name : "Class atlas: " + (names.join(", ") || m.name);
      $("title").innerHTML = escapeHtml(what) + (detail ? " <span class=\"muted\">\u00b7 " + escapeHtml(detail) + "</span>" : "");
      $("title").title = what + (detail ? " \u00b7 " + detail : "");
      var back = $("back");
      back.href = parentBase() + "index.html";
      back.hidden = false;
      title = what;
    } else {
      $("title").textContent = title;
    }
    document.title = title + " \u2014 activation atlas";
  }

  /* ---- the class picker: classes/index.json, read the first time the picker opens ---- */

  var PICKER_SHOWN = 200;  // classes listed at once; the filter finds the rest
  var picker = { open: false, base: "", index: null, items: [], promise: null };
  atlas.picker = picker;

  function setupPicker(m) {
    var collect = m.config && m.config.collect;
    if (collect && collect.attribution === false) return;  // no attribution: atlas classes has nothing to select by
    picker.base = m.subset ? parentBase() : "";
    $("picker").hidden = false;
    $("picker-button").addEventListener("click", function () { togglePicker(); });
    $("picker-filter").addEventListener("input", renderPicker);
    $("picker-list").addEventListener("click", function (e) {
      var button = e.target.closest("button[data-k]");
      if (button) showBuildCommand(picker.items[+button.getAttribute("data-k")]);
    });
    document.addEventListener("pointerdown", function (e) {
      if (picker.open && !$("picker").contains(e.target)) togglePicker(false);
    });
    $("picker").addEventListener("keydown", function (e) {  // also where the atlas failed to open (no other key handler)
      if (e.key === "Escape" && picker.open) { e.stopPropagation(); togglePicker(false); $("picker-button").focus(); }
    });
  }

  function togglePicker(open) {
    picker.open = open === undefined ? !picker.open : open;
    $("picker-box").hidden = !picker.open;
    $("picker-button").setAttribute("aria-expanded", String(picker.open));
    if (!picker.open) return;
    loadClassIndex().then(function () {
      renderPicker();
      if (picker.open) $("picker-filter").focus({ preventScroll: true });
    });
  }

  // classes/index.json, or null where none has been written (no class atlas built yet): the labels are listed instead.
  function loadClassIndex() {
    if (!picker.promise) {
      picker.promise = fetch(picker.base + "classes/index.json")
        .then(function (r) { return r.ok ? r.json() : null; })
        .catch(function () { return null; })
        .then(function (index) {
          picker.index = index && Array.isArray(index.classes) ? index : null;
          picker.items = pickerItems(picker.index);
          atlas.classIndexLoaded = true;
        });
    }
    return picker.promise;
  }

  // Built class atlases first, then by rows (the classes a build would succeed for), then in the model's order.
  function pickerItems(index) {
    var items = index
      ? index.classes.map(function (c) { return { index: c.index, name: c.name, rows: c.rows, folder: c.folder || null }; })
      : (labels || []).map(function (name, k) { return { index: k, name: name, rows: null, folder: null }; });
    items.sort(function (x, y) { return (!!y.folder - !!x.folder) || ((y.rows || 0) - (x.rows || 0)) || (x.index - y.index); });
    return items;
  }

  function rowsText(rows) {
    return rows === null || rows === undefined ? "" : rows.toLocaleString() + " row" + (rows === 1 ? "" : "s");
  }

  function currentClassIndex() {
    return subsetKind() === "class" && manifest.subset.classes && manifest.subset.classes.length ? manifest.subset.classes[0].index : null;
  }

  function renderPicker() {
    var index = picker.index, items = picker.items;
    var built = items.filter(function (c) { return c.folder; }).length;
    var note = $("picker-note");
    if (index) {
      note.textContent = built + " class atlas" + (built === 1 ? "" : "es") + " built. Rows: " + (index.selection || "rows whose top attribution is the class") +
        "; a class atlas needs at least " + index.min_rows + ".";
    } else if (items.length) {
      note.textContent = "No class atlas has been built for this atlas yet (there is no classes/index.json). Pick a class for the command that builds one.";
    } else {
      note.innerHTML = "No class atlas has been built for this atlas yet, and it has no class names. Build one with " +
        "<code>atlas classes RUN_DIR --class INDEX</code> (or <code>--compare A B</code>).";
    }
    renderPairs(index);

    var query = $("picker-filter").value.trim().toLowerCase();
    var matching = [];
    items.forEach(function (c, k) {
      if (!query || c.name.toLowerCase().indexOf(query) >= 0 || String(c.index) === query) matching.push(k);
    });
    var here = currentClassIndex();
    var list = $("picker-list");
    list.innerHTML = matching.slice(0, PICKER_SHOWN).map(function (k) {
      var c = items[k], rows = rowsText(c.rows);
      var count = rows ? " <span class=\"rows\">" + rows + "</span>" : "";
      if (c.folder) {
        var current = c.index === here;
        return "<li class=\"built\"><a href=\"" + escapeHtml(picker.base + c.folder + "/index.html") + "\"" + (current ? " aria-current=\"page\"" : "") +
          " data-index=\"" + c.index + "\" title=\"open its class atlas\">" + escapeHtml(c.name) + (current ? " <span class=\"muted\">(this page)</span>" : "") + "</a>" +
          "<span class=\"badge\">atlas</span>" + count + "</li>";
      }
      return "<li><button type=\"button\" data-k=\"" + k + "\" data-index=\"" + c.index + "\" title=\"not built yet: show the command that builds it\">" +
        escapeHtml(c.name) + "</button>" + count + "</li>";
    }).join("");
    $("picker-classes-title").hidden = !items.length;
    var more = $("picker-more");
    more.hidden = matching.length <= PICKER_SHOWN && (matching.length > 0 || !items.length);
    more.textContent = matching.length ? (matching.length - PICKER_SHOWN) + " more: type to filter." : "No class matches \u201c" + query + "\u201d.";
  }

  function renderPairs(index) {
    var pairs = index && Array.isArray(index.pairs) ? index.pairs.filter(function (p) { return p.a && p.b && p.folder; }) : [];
    var here = subsetKind() === "pair" ? location.pathname.replace(/index\.html$/, "") : null;
    $("pair-list").innerHTML = pairs.map(function (p) {
      var href = picker.base + p.folder + "/index.html";
      var current = here && new URL(href, location.href).pathname.replace(/index\.html$/, "") === here;
      return "<li><a href=\"" + escapeHtml(href) + "\"" + (current ? " aria-current=\"page\"" : "") + ">" + escapeHtml(p.a.name) + " vs " + escapeHtml(p.b.name) +
        (current ? " <span class=\"muted\">(this page)</span>" : "") + "</a>" + (p.patch ? " <span class=\"rows\">patch test</span>" : "") + "</li>";
    }).join("") || "<li class=\"muted empty\">None built yet: <code>atlas classes RUN_DIR --compare A B</code></li>";
    $("picker-pairs").hidden = false;
  }

  // A class as atlas classes reads it: the name (quoted for a POSIX shell), or the index where the name is not unique.
  function classArgument(item) {
    var names = labels || picker.items.map(function (c) { return c.name; });
    var same = names.filter(function (name) { return name === item.name; }).length;
    if (same > 1) return String(item.index);
    if (!/["$`\\!]/.test(item.name)) return "\"" + item.name + "\"";
    return "'" + item.name.replace(/'/g, "'\\''") + "'";
  }

  // Where the bundle was written, as its manifest records it: the honest hint for RUN_DIR (it may have moved since).
  function writtenTo() {
    var out = manifest.config && manifest.config.output;
    if (!out || typeof out.dir !== "string" || !out.dir) return null;
    var dir = out.dir.replace(/\/+$/, "");
    if (manifest.subset) return dir.indexOf("/") >= 0 ? dir.replace(/\/[^\/]*$/, "") : null;  // <parent>/classes -> <parent>
    return dir + "/" + (out.name || manifest.name || "");
  }

  function showBuildCommand(item) {
    if (!item) return;
    var command = "atlas classes RUN_DIR --class " + classArgument(item);
    var index = picker.index, few = "";
    if (index && item.rows !== null && item.rows < index.min_rows) {
      few = "<p class=\"hint\">Only " + rowsText(item.rows) + " ha" + (item.rows === 1 ? "s" : "ve") + " it as their top attribution, and a class atlas needs " +
        "<code>classes.min_rows</code> = " + index.min_rows + ": add " +
        (item.rows > 0 ? "<code>--set classes.min_rows=" + item.rows + "</code>, or " : "") +
        "<code>--set classes.select=top_k</code> (its <code>classes.top_k</code> best rows instead).</p>";
    }
    var dir = writtenTo();
    var box = $("picker-command");
    box.innerHTML = "<p>No class atlas of <b>" + escapeHtml(item.name) + "</b> yet" + (item.rows !== null ? " (" + rowsText(item.rows) + ")" : "") +
      ". Build it with:</p><code class=\"command\">" + escapeHtml(command) + "</code>" + few +
      "<p class=\"hint\">RUN_DIR: " + (manifest.subset ? "the parent atlas's folder" : "this atlas's folder") + ", the one given to <code>atlas serve</code>" +
      (dir ? " (it was written to <code>" + escapeHtml(dir) + "</code>)" : "") + ". Then reload this page.</p>";
    box.hidden = false;
    box.scrollIntoView({ block: "nearest" });
    atlas.lastCommand = command;
  }

  /* ---- a comparison: its axis and the patch experiment (patch.json) ---- */

  function setupPair(m) {
    var pair = pairClasses();
    if (!pair) return;
    var across = (m.pair && m.pair.x_axis) || "attribution to a minus attribution to b; right favours a";
    $("axis-left").textContent = "\u2190 favours " + pair.b.name;
    $("axis-right").textContent = "favours " + pair.a.name + " \u2192";
    $("axis-left").title = $("axis-right").title = "across: " + across + (m.pair && m.pair.y_axis ? "; down: " + m.pair.y_axis : "");
    $("axis-left").hidden = $("axis-right").hidden = false;
    var file = m.patch && m.patch.file;
    if (!file) return;  // the comparison was built without the patch experiment
    var box = $("patch");
    if (window.matchMedia && window.matchMedia("(max-width: 720px)").matches) box.open = false;  // a phone: the summary only
    box.hidden = false;
    $("patch-body").innerHTML = "<p class=\"muted\">loading " + escapeHtml(file) + "&hellip;</p>";
    fetchOk(file)
      .then(function (r) { return r.json(); })
      .then(function (report) { atlas.patch = report; renderPatch(report, pair); })
      .catch(function (err) { $("patch-body").innerHTML = "<p class=\"muted\">Cannot read the patch experiment: " + escapeHtml(err.message) + "</p>"; });
  }

  // What a cell's column says along a comparison's x axis: the range of (attribution a - attribution b) it holds.
  function pairColumnText(i, g) {
    var pair = pairClasses(), scale = manifest.pair && manifest.pair.scale;
    if (!pair || !isFinite(scale) || !(g > 1)) return "";
    var lo = (2 * i / g - 1) * scale, hi = (2 * (i + 1) / g - 1) * scale, mid = (lo + hi) / 2;
    var range = i === 0 ? "below " + fmt(hi, 2) : i === g - 1 ? "above " + fmt(lo, 2) : fmt(lo, 2) + " to " + fmt(hi, 2);
    var side = mid > 1e-9 ? "favours " + pair.a.name : mid < -1e-9 ? "favours " + pair.b.name : "between the two";
    return side + " (attribution " + pair.a.name + " \u2212 " + pair.b.name + ": " + range + ")";
  }

  function percent(x) {
    if (x === null || x === undefined || !isFinite(x)) return "\u2013";
    return x === 0 ? "0%" : x === 1 ? "100%" : (100 * x).toFixed(1) + "%";
  }

  var PATCH_KINDS = [
    ["icon", "icon", "the comparison's icons furthest towards b"],
    ["noise", "noise", "uniform noise of the same size (baseline)"],
    ["random_icon", "random icon", "an icon of the parent atlas, drawn at random (baseline)"]
  ];

  function flipCells(count, rule) {
    if (!count) return "<td class=\"" + rule + "-rate\">\u2013</td><td class=\"" + rule + "-n\">\u2013</td>";
    var interval = Array.isArray(count.interval) && count.interval.length === 2 ? " <span class=\"muted\">(" + percent(count.interval[0]).replace("%", "") +
      "\u2013" + percent(count.interval[1]) + ")</span>" : "";
    return "<td class=\"" + rule + "-rate\">" + percent(count.rate) + interval + "</td><td class=\"" + rule + "-n\">" + count.flips + "/" + count.n + "</td>";
  }

  function renderPatch(report, pair) {
    var n = report.n_images || 0;
    var a = (report.pair && report.pair.a) || pair.a, b = (report.pair && report.pair.b) || pair.b;
    $("patch-summary").textContent = "Patch experiment: " + n + " image" + (n === 1 ? "" : "s");
    var html = report.question ? "<p class=\"question\">" + escapeHtml(report.question) + "</p>" : "";
    if (n > 0) {
      html += "<p>" + n + " image" + (n === 1 ? "" : "s") + " the model classifies as <b>" + escapeHtml(a.name) + "</b>, " +
        (report.held_out ? "<span class=\"held-out\">held out</span> (not among the images this atlas was built from)"
                         : "<span class=\"held-out\">not held out</span> (taken from the images this atlas was built from)") +
        (report.images_scanned ? "; " + report.images_scanned.toLocaleString() + " looked at" : "") + ". A flip: the top-1 class becomes <b>" + escapeHtml(b.name) + "</b>.</p>";
    }
    if (report.note) html += "<p class=\"note\">" + escapeHtml(report.note) + "</p>";
    var rows = "";
    PATCH_KINDS.forEach(function (kind) {
      var sizes = report[kind[0]] && Array.isArray(report[kind[0]].sizes) ? report[kind[0]].sizes : [];
      sizes.forEach(function (entry, k) {
        var fraction = report.size_fractions && report.sizes && report.size_fractions.length === report.sizes.length ? report.size_fractions[report.sizes.indexOf(entry.size)] : undefined;
        rows += "<tr data-kind=\"" + kind[0] + "\" data-size=\"" + entry.size + "\">" +
          (k === 0 ? "<th scope=\"rowgroup\" rowspan=\"" + sizes.length + "\" title=\"" + escapeHtml(kind[2]) + "\">" + kind[1] + "</th>" : "") +
          "<td class=\"size\">" + entry.size + " px" + (fraction !== undefined ? " <span class=\"muted\">(" + Math.round(100 * fraction) + "%)</span>" : "") + "</td>" +
          flipCells(entry.corner, "corner") + flipCells(entry.best_corner, "best") + "</tr>";
      });
    });
    if (rows && n > 0) {
      var corner = String(report.corner || "fixed").replace(/_/g, " ");
      html += "<table id=\"patch-table\"><thead><tr><th rowspan=\"2\">patch</th><th rowspan=\"2\">side</th>" +
        "<th colspan=\"2\">" + escapeHtml(corner) + " corner</th><th colspan=\"2\">best of the 4 corners</th></tr>" +
        "<tr><th>flip rate (95% CI)</th><th>flips/n</th><th>flip rate (95% CI)</th><th>flips/n</th></tr></thead><tbody>" + rows + "</tbody></table>" +
        "<p class=\"hint\">Intervals: Wilson, 95%. Best corner: a flip at any of the four corners. Sides in the model's input pixels (fraction of its side)" +
        (report.seed !== undefined ? "; seed " + escapeHtml(report.seed) : "") + ".</p>";
    } else if (!report.note) {
      html += "<p class=\"note\">No image was tested.</p>";
    }
    $("patch-body").innerHTML = html;
  }

  /* ---- for tests and scripts: where a cell is on the page ---- */

  atlas.cellCenter = function (grid, i, j) {
    var point = viewer.viewport.viewportToViewerElementCoordinates(new OpenSeadragon.Point((i + 0.5) / grid, (j + 0.5) / grid), true);
    var box = viewer.element.getBoundingClientRect();
    return { x: box.left + point.x, y: box.top + point.y };
  };
  atlas.currentGrid = function () { return levels[current] ? levels[current].grid : null; };
  // The kept cells of a loaded grid, as {i, j} (from its cell index: no cell details are needed).
  atlas.keptCells = function (grid) {
    var level = levelOf(grid), kept = [];
    if (!level || !level.index) return kept;
    for (var p = 0; p < level.index.length; p++) if (level.index[p] >= 0) kept.push({ i: p % grid, j: Math.floor(p / grid) });
    return kept;
  };
  atlas.selected = function () { return selected; };
})();
