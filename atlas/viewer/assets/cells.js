/* Which cells a grid keeps and where their details are: the cell index (int32 [g, g], -1 where no cell is
 * kept) says which exist; their details come in blocks of cells fetched as they are shown or hovered.
 * Bundles written before the split (no cell_index in the manifest) give cells.json whole.
 * A level (one manifest level) carries what has been read of it. No DOM: node tests it. */

import { fetchOk } from "./net.js";
import { parseNpy } from "./npy.js";

export function cellKey(i, j) {
  return i + "_" + j;
}

// The cell index of an older bundle, from its whole cells.json.
export function indexFromCells(cells, grid) {
  const index = new Int32Array(grid * grid).fill(-1);
  cells.forEach((c, n) => { index[c.j * grid + c.i] = n; });
  return index;
}

// Where cell (i, j) is in the level's arrays (cells.json, attribution.npy), or -1 where none is kept.
export function cellIndex(level, i, j) {
  if (!level.index || i < 0 || j < 0 || i >= level.grid || j >= level.grid) return -1;
  return level.index[j * level.grid + i];
}

export function keptCells(index, grid) {
  const kept = [];
  if (!index) return kept;
  for (let p = 0; p < index.length; p++) if (index[p] >= 0) kept.push({ i: p % grid, j: Math.floor(p / grid) });
  return kept;
}

export function blockOf(size, i, j) {
  const bi = Math.floor(i / size), bj = Math.floor(j / size);
  return { bi: bi, bj: bj, key: cellKey(bi, bj) };
}

export function blockUrl(pattern, bi, bj) {
  return pattern.replace("{bi}", bi).replace("{bj}", bj);
}

// The blocks under bounds (in atlas units, the atlas 1 wide) that exist and have not been asked for, at most limit.
export function blocksToFetch(level, bounds, limit) {
  const g = level.grid, size = level.cell_blocks.size;
  const i0 = Math.max(0, Math.floor(bounds.x * g)), i1 = Math.min(g - 1, Math.floor((bounds.x + bounds.width) * g));
  const j0 = Math.max(0, Math.floor(bounds.y * g)), j1 = Math.min(g - 1, Math.floor((bounds.y + bounds.height) * g));
  const present = level.presentBlocks || (level.presentBlocks = new Set(level.cell_blocks.present.map((b) => cellKey(b[0], b[1]))));
  const wanted = [];
  for (let bj = Math.floor(j0 / size); bj <= Math.floor(j1 / size); bj++) {
    for (let bi = Math.floor(i0 / size); bi <= Math.floor(i1 / size); bi++) {
      const key = cellKey(bi, bj);
      if (!present.has(key) || (level.blocks && level.blocks.has(key))) continue;
      if (wanted.length >= limit) return wanted;
      wanted.push({ bi: bi, bj: bj });
    }
  }
  return wanted;
}

function addCells(level, cells) {
  cells.forEach((c, k) => { if (c.n === undefined) c.n = k; level.cellMap.set(cellKey(c.i, c.j), c); });
}

// What a grid needs before hover and the heatmap work: which cells exist, and where each is in the level's arrays.
// Read once; onError gets a failure's message and the promise then resolves to undefined.
export function loadCells(level, onError) {
  if (!level.cellsPromise) {
    level.cellMap = new Map();
    level.blocks = new Map();
    level.cellsPromise = (level.cell_index
      ? fetchOk(level.cell_index).then((r) => r.arrayBuffer()).then((buffer) => {
          level.index = parseNpy(buffer, "<i4").data;
          level.keptCount = level.n_cells;
        })
      : fetchOk(level.cells).then((r) => r.json()).then((cells) => {  // an older bundle
          level.index = indexFromCells(cells, level.grid);
          level.keptCount = cells.length;
          addCells(level, cells);
          level.wholeCells = true;
        }))
      .then(() => { level.cellsLoaded = true; return level; })
      .catch((err) => { onError(err.message); });
  }
  return level.cellsPromise;
}

// The block of cells holding (i, j): fetched once, then every cell in it is in level.cellMap.
// A failed block is forgotten, so hovering it again retries.
export function loadBlock(level, i, j, onError) {
  if (level.wholeCells || !level.cell_blocks) return Promise.resolve(level);
  const block = blockOf(level.cell_blocks.size, i, j);
  if (!level.blocks.has(block.key)) {
    level.blocks.set(block.key, fetchOk(blockUrl(level.cell_blocks.files, block.bi, block.bj)).then((r) => r.json())
      .then((cells) => { addCells(level, cells); return level; })
      .catch((err) => { level.blocks.delete(block.key); onError(err.message); }));
  }
  return level.blocks.get(block.key);
}

export function cellAtIndex(level, i, j) {
  return (level.cellMap && level.cellMap.get(cellKey(i, j))) || null;
}
