/* Where class labels go on the atlas, as the article writes them: a cell's top class over it once zoomed in far
 * enough to read, sparsely. One label per connected region of cells that share a top class (4-neighbours), at
 * the region's cell nearest its centre; larger regions first; a lone cell's region is labelled only when cells
 * are large; and a label that would come within half a cell (at least 16 px) of one already placed is left out,
 * so labels never pile up over the icons. No DOM: node tests it. */

export const LABEL_MIN_ZOOM = 1.5;  // relative to the whole atlas: the overview stays a picture
export const LABEL_MIN_CELL_PX = 24;  // cells smaller than this on screen get no label
export const LABEL_LONE_CELL_PX = 64;  // below this, a region of one cell (often noise in the layout) gets none
export const LABEL_HEIGHT_PX = 18;
export const LABEL_MAX_CHARS = 24;

// Whether labels show at this zoom (1 = whole atlas) with cells this many screen pixels wide.
export function labelsReadable(relativeZoom, cellPx) {
  return relativeZoom >= LABEL_MIN_ZOOM && cellPx >= LABEL_MIN_CELL_PX;
}

// A label as drawn: long class names shortened with an ellipsis.
export function labelText(label) {
  const text = String(label);
  return text.length > LABEL_MAX_CHARS ? text.slice(0, LABEL_MAX_CHARS - 1) + "\u2026" : text;
}

function estimateWidth(text) {
  return 7 * text.length + 8;
}

// cells: [{i, j, label}] (the cells on screen whose top class is known); cellPx: a cell's width on screen;
// measure(text): a label's width in pixels. Returns [{i, j, label, text, size}], size: the region's cell count.
export function placeLabels(cells, cellPx, measure = estimateWidth) {
  const byKey = new Map(cells.map((c) => [c.i + "," + c.j, c]));
  const seen = new Set();
  const regions = [];
  for (const cell of cells) {
    const key = cell.i + "," + cell.j;
    if (seen.has(key)) continue;
    seen.add(key);
    const members = [], queue = [cell];
    while (queue.length) {
      const c = queue.pop();
      members.push(c);
      for (const [di, dj] of [[1, 0], [-1, 0], [0, 1], [0, -1]]) {
        const k = (c.i + di) + "," + (c.j + dj), n = byKey.get(k);
        if (n && !seen.has(k) && n.label === cell.label) { seen.add(k); queue.push(n); }
      }
    }
    regions.push(members);
  }
  regions.sort((a, b) => b.length - a.length || String(a[0].label).localeCompare(String(b[0].label)));
  const pad = Math.max(cellPx / 4, 8), placed = [], boxes = [];
  for (const members of regions) {
    if (members.length === 1 && cellPx < LABEL_LONE_CELL_PX) continue;
    const ci = members.reduce((s, c) => s + c.i, 0) / members.length;
    const cj = members.reduce((s, c) => s + c.j, 0) / members.length;
    const anchor = members.reduce((best, c) => {
      const d = (c.i - ci) ** 2 + (c.j - cj) ** 2, e = (best.i - ci) ** 2 + (best.j - cj) ** 2;
      return d < e || (d === e && (c.j < best.j || (c.j === best.j && c.i < best.i))) ? c : best;
    });
    const text = labelText(anchor.label);
    const width = measure(text), x = (anchor.i + 0.5) * cellPx, y = (anchor.j + 0.5) * cellPx;
    const box = { left: x - width / 2 - pad, right: x + width / 2 + pad, top: y - LABEL_HEIGHT_PX / 2 - pad, bottom: y + LABEL_HEIGHT_PX / 2 + pad };
    const clash = boxes.some((b) => box.left < b.right && b.left < box.right && box.top < b.bottom && b.top < box.bottom);
    if (clash) continue;
    boxes.push(box);
    placed.push({ i: anchor.i, j: anchor.j, label: anchor.label, text: text, size: members.length });
  }
  return placed;
}
