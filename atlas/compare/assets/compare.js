/* Comparison page: one OpenSeadragon viewer per atlas, pan/zoom synchronised within a group,
   hovering a cell outlines the same cell in every atlas of the group and shows what each holds. */
(function () {
  "use strict";
  var state = { groups: [], errors: [], ready: false, grid: null };
  window.compare = state;
  window.addEventListener("error", function (e) { state.errors.push(String(e.message)); });

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function levelOf(panel, grid) {
    for (var k = 0; k < panel.levels.length; k++) if (panel.levels[k].grid === grid) return panel.levels[k];
    return panel.levels[panel.levels.length - 1];
  }

  function loadCells(view) {
    var level = levelOf(view.panel, state.grid);
    view.cells = null;
    return fetch(view.panel.bundle + "/" + level.cells).then(function (r) {
      if (!r.ok) throw new Error("cells " + r.status);
      return r.json();
    }).then(function (cells) {
      var map = {};
      cells.forEach(function (c) { map[c.i + "_" + c.j] = c; });
      view.cells = map;
    }).catch(function (err) { state.errors.push(String(err)); });
  }

  function openLevel(view) {
    var level = levelOf(view.panel, state.grid);
    view.highlighted = false;  // open() clears the overlays
    view.viewer.open({ tileSource: view.panel.bundle + "/" + level.dzi, x: 0, y: 0, width: 1 });
    return loadCells(view);
  }

  // Only the panel the user is working in leads; the others copy its current (animated) view each frame.
  function syncFrom(group, source) {
    if (group.leader !== source) return;
    var vp = source.viewer.viewport;
    var zoom = vp.getZoom(true), centre = vp.getCenter(true);
    group.views.forEach(function (view) {
      if (view === source) return;
      view.viewer.viewport.zoomTo(zoom, null, true);
      view.viewer.viewport.panTo(centre, true);
    });
  }

  function describe(view, i, j) {
    var cell = view.cells && view.cells[i + "_" + j];
    if (!cell) return view.panel.name + ": empty cell";
    var top = (cell.top_classes || []).slice(0, 2).map(function (c) { return c.label; }).join(", ");
    return view.panel.name + ": " + cell.count + " activations" + (top ? "; " + top : "");
  }

  function hover(group, i, j) {
    var g = state.grid;
    group.views.forEach(function (view) {
      var rect = new OpenSeadragon.Rect(i / g, j / g, 1 / g, 1 / g);
      if (view.highlighted) view.viewer.updateOverlay(view.mark, rect);
      else view.viewer.addOverlay({ element: view.mark, location: rect });
      view.highlighted = true;
      view.info.textContent = describe(view, i, j);
    });
    group.hovered = [i, j];
  }

  function unhover(group) {
    group.views.forEach(function (view) {
      if (view.highlighted) view.viewer.removeOverlay(view.mark);  // OpenSeadragon shows overlays with an inline style
      view.highlighted = false;
      view.info.textContent = view.panel.name;
    });
    group.hovered = null;
  }

  function makeView(group, panel, container) {
    var box = el("div", "panel");
    var head = el("h3");
    var link = el("a", null, panel.name);
    link.href = panel.bundle + "/";
    link.title = "open this atlas on its own";
    head.appendChild(link);
    var osd = el("div", "osd");
    var info = el("div", "info", panel.name);
    box.appendChild(head); box.appendChild(osd); box.appendChild(info);
    container.appendChild(box);
    var viewer = OpenSeadragon({
      element: osd, drawer: "canvas", showNavigationControl: false, preload: false,
      visibilityRatio: 0.5, minZoomImageRatio: 0.5, maxZoomPixelRatio: 4, animationTime: 0.3,
      imageSmoothingEnabled: false,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true, scrollToZoom: true }
    });
    var view = { panel: panel, viewer: viewer, info: info, mark: el("div", "cell-mark"), highlighted: false, cells: null, loaded: false };
    viewer.addHandler("open-failed", function (e) { state.errors.push("open failed: " + (e.message || panel.name)); });
    viewer.addHandler("tile-load-failed", function () { state.errors.push("tile failed in " + panel.name); });
    viewer.addHandler("tile-drawn", function () { view.loaded = true; });
    viewer.addHandler("viewport-change", function () { syncFrom(group, view); });
    new OpenSeadragon.MouseTracker({
      element: osd,
      enterHandler: function () { group.leader = view; },
      pressHandler: function () { group.leader = view; },
      scrollHandler: function () { group.leader = view; },
      moveHandler: function (e) {
        group.leader = view;
        var p = viewer.viewport.pointFromPixel(e.position, true);
        var g = state.grid;
        if (p.x < 0 || p.y < 0 || p.x >= 1 || p.y >= 1) { unhover(group); return; }
        hover(group, Math.floor(p.x * g), Math.floor(p.y * g));
      },
      leaveHandler: function () { unhover(group); }
    });
    return view;
  }

  fetch("compare.json").then(function (r) {
    if (!r.ok) throw new Error("compare.json " + r.status);
    return r.json();
  }).then(function (data) {
    var grids = data.groups[0].panels[0].levels.map(function (l) { return l.grid; });
    state.grid = grids[Math.floor((grids.length - 1) / 2)];
    var select = document.getElementById("grid-select");
    grids.forEach(function (g) {
      var option = el("option", null, g + " × " + g);
      option.value = String(g);
      if (g === state.grid) option.selected = true;
      select.appendChild(option);
    });
    var sections = document.querySelectorAll("section.group");
    var loads = [];
    data.groups.forEach(function (groupData, k) {
      var group = { title: groupData.title, views: [], leader: null, hovered: null };
      var container = sections[k].querySelector(".panels");
      groupData.panels.forEach(function (panel) { group.views.push(makeView(group, panel, container)); });
      group.views.forEach(function (view) { loads.push(openLevel(view)); });
      state.groups.push(group);
    });
    select.addEventListener("change", function () {
      state.grid = Number(select.value);
      var again = [];
      state.groups.forEach(function (group) { unhover(group); group.views.forEach(function (v) { again.push(openLevel(v)); }); });
      Promise.all(again).then(function () { state.ready = true; });
    });
    return Promise.all(loads);
  }).then(function () { state.ready = true; }).catch(function (err) { state.errors.push(String(err)); });
})();
