"""The activation store: one Zarr group, one chunk of rows per shard.

Shard i owns rows [i * rows_per_shard, (i + 1) * rows_per_shard) of every
array, always written whole (unused rows zero and ``valid`` false), so workers
write in parallel without touching each other's chunks and a rewrite after a
crash produces the same bytes. A shard counts as done only when its marker
file exists; the marker is written (atomically) after all its chunks.

Readers stream: :meth:`ActivationStore.chunks` yields one shard's valid rows at
a time and :meth:`ActivationStore.take` reads chosen rows, so no stage needs
the whole store in memory. Attribution is stored as float16 (half the disk and
reads; the per-cell means that use it are summed in float64), clipped to
float16's finite range; stores written before that hold float32.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import zarr

from atlas.io import write_json
from atlas.markers import read_marker, write_marker
from atlas.storage import Location, location

ROW_FIELDS = ("activation", "attribution", "image_id", "y", "x", "label", "kind")  # what a reader gets per row
_ARRAYS = (*ROW_FIELDS, "valid")
POSITION_ROW = 0  # a row's kind: one position of the layer's map (a patch token, for a token layer)
CLASS_TOKEN_ROW = 1  # the class token of a token layer (collect.class_token), stored at y = x = -1
KIND_DTYPE = "int8"
ATTRIBUTION_DTYPE = "float16"
_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class Rows:
    """Collected rows, valid ones only, in store order."""

    activation: np.ndarray  # float32 [N, C]
    attribution: np.ndarray  # float16 [N, K] (float32 in stores written before float16; K = 0 without attribution)
    image_id: np.ndarray  # int64 [N]
    y: np.ndarray  # int32 [N]
    x: np.ndarray  # int32 [N]
    label: np.ndarray  # int32 [N], -1 where the source has no labels
    kind: np.ndarray = field(default_factory=lambda: np.zeros(0, KIND_DTYPE))  # int8 [N]: POSITION_ROW or CLASS_TOKEN_ROW

    def __post_init__(self) -> None:
        if len(self.kind) == 0 and len(self.image_id):
            self.kind = np.full(len(self.image_id), POSITION_ROW, KIND_DTYPE)  # rows made without kinds are positions

    def __len__(self) -> int:
        return len(self.image_id)


@dataclass(frozen=True)
class RowChunk:
    """Some of the N valid rows, in store order: rows ``start .. start + len - 1`` of the N."""

    start: int
    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    @property
    def rows(self) -> slice:
        return slice(self.start, self.start + len(self))


@dataclass(frozen=True)
class StoreLayout:
    n_shards: int
    rows_per_shard: int
    channels: int
    n_classes: int


class ActivationStore:
    """The store's own files, inside its folder (``activations/`` of a bundle)."""

    ROWS = "rows.zarr"  # the arrays
    LAYOUT = "layout.json"  # the StoreLayout and the collect key it was created for
    DONE = "done"  # one report per finished shard

    def __init__(self, path: Location | str) -> None:
        self.path = location(path)

    @property
    def _done_dir(self) -> Location:
        return self.path / self.DONE

    def _group(self, mode: Literal["r", "r+", "w"]) -> zarr.Group:
        """The Zarr group, on this machine's disk or on the store the bundle lives in (fsspec)."""
        rows = self.path / self.ROWS
        if isinstance(rows, Path):
            return zarr.open_group(rows, mode=mode)
        return zarr.open_group(str(rows), mode=mode, storage_options=dict(rows.storage_options))

    def layout(self) -> StoreLayout:
        stored = json.loads((self.path / self.LAYOUT).read_bytes())
        stored.pop("key", None)
        return StoreLayout(**stored)

    def exists_for(self, layout: StoreLayout, key: str) -> bool:
        stored = read_marker(self.path / self.LAYOUT)
        return stored is not None and stored.pop("key", None) == key and StoreLayout(**stored) == layout

    def create(self, layout: StoreLayout, key: str) -> None:
        """Lay out empty arrays (wiping anything older): chunks align with shards."""
        rows = layout.n_shards * layout.rows_per_shard
        chunk = (layout.rows_per_shard,)
        group = self._group("w")
        group.create_array("activation", shape=(rows, layout.channels), chunks=chunk + (layout.channels,), dtype="float32", fill_value=0.0)
        group.create_array(
            "attribution",
            shape=(rows, layout.n_classes),
            chunks=chunk + (max(layout.n_classes, 1),),
            dtype=ATTRIBUTION_DTYPE,
            fill_value=0.0,
        )
        for name, dtype in (("image_id", "int64"), ("y", "int32"), ("x", "int32"), ("label", "int32"), ("kind", KIND_DTYPE)):
            group.create_array(name, shape=(rows,), chunks=chunk, dtype=dtype, fill_value=0)
        group.create_array("valid", shape=(rows,), chunks=chunk, dtype="bool", fill_value=False)
        self._done_dir.mkdir(parents=True, exist_ok=True)
        for marker in self._done_dir.glob("*.json"):
            marker.unlink()
        write_marker(self.path / self.LAYOUT, key, **layout.__dict__)

    def is_done(self, shard_index: int) -> bool:
        return (self._done_dir / f"{shard_index:06d}.json").exists()

    def write_shard(self, shard_index: int, rows: Rows, report: dict) -> None:
        layout = self.layout()
        n, cap = len(rows), layout.rows_per_shard
        if n > cap:
            raise ValueError(f"shard {shard_index} has {n} rows; the store holds {cap} per shard")
        start = shard_index * cap
        group = self._group("r+")
        for name in _ARRAYS:
            if name == "kind" and name not in group:  # a resumed store from before row kinds: positions only
                if (rows.kind != POSITION_ROW).any():
                    raise ValueError("this activation store has no row kinds; create it again to store class-token rows")
                continue
            array = _array(group, name)
            data = np.ones(n, dtype=bool) if name == "valid" else getattr(rows, name)
            if name == "attribution" and array.dtype == np.float16:
                data = np.clip(data, -_FLOAT16_MAX, _FLOAT16_MAX)  # an outlier saturates instead of becoming inf
            padded = np.zeros((cap,) + array.shape[1:], dtype=array.dtype)
            if n:
                padded[:n] = data
            array[start : start + cap] = padded
        write_json(self._done_dir / f"{shard_index:06d}.json", report)

    def reports(self) -> list[dict]:
        markers: list[Location] = sorted(self._done_dir.glob("*.json"), key=lambda p: p.name)
        return [json.loads(p.read_bytes()) for p in markers]

    def read(self) -> Rows:
        """Every valid row at once: for notebooks and small stores; stages stream with :meth:`chunks`."""
        group = self._group("r")
        valid = np.asarray(_array(group, "valid")[:])
        arrays = {name: _read(group, name, slice(None))[valid] for name in ROW_FIELDS}
        return Rows(**arrays)

    # --- streaming reads --------------------------------------------------------------------------

    def _valid_by_shard(self) -> tuple[np.ndarray, int, np.ndarray]:
        """The ``valid`` mask as [shards, rows_per_shard] (one bool per stored row: small), rows per shard, and starts."""
        group = self._group("r")
        valid = np.asarray(_array(group, "valid")[:])
        cap = self.layout().rows_per_shard
        valid = valid.reshape(-1, cap)
        return valid, cap, np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int64)

    def count(self) -> int:
        """N, the number of valid rows."""
        return int(self._valid_by_shard()[2][-1])

    def shard_starts(self) -> np.ndarray:
        """int64 [shards + 1]: shard s holds valid rows ``starts[s] .. starts[s + 1] - 1`` of the N."""
        return self._valid_by_shard()[2]

    def chunks(self, names: Sequence[str] = ROW_FIELDS, shards: Sequence[int] | None = None) -> Iterator[RowChunk]:
        """The valid rows of each shard in turn (or of ``shards`` only), reading one shard's chunk per array at a time."""
        unknown = set(names) - set(ROW_FIELDS)
        if unknown:
            raise ValueError(f"unknown row fields {sorted(unknown)}; choose from {ROW_FIELDS}")
        yield from self._chunks(names, shards, self._valid_by_shard())

    def _chunks(
        self, names: Sequence[str], shards: Sequence[int] | None, by_shard: tuple[np.ndarray, int, np.ndarray]
    ) -> Iterator[RowChunk]:
        group = self._group("r")
        valid, cap, starts = by_shard
        for shard in range(len(valid)) if shards is None else shards:
            mask = valid[shard]
            if not mask.any():
                continue
            rows = slice(shard * cap, (shard + 1) * cap)
            yield RowChunk(int(starts[shard]), {name: _read(group, name, rows)[mask] for name in names})

    def take(self, rows: np.ndarray, names: Sequence[str] = ROW_FIELDS) -> dict[str, np.ndarray]:
        """The given rows (indices among the N, any order, repeats allowed), reading only the shards that hold them."""
        rows = np.asarray(rows, dtype=np.int64)
        by_shard = self._valid_by_shard()  # the valid mask, read once for the lookup and the reads
        starts = by_shard[2]
        if len(rows) and (rows.min() < 0 or rows.max() >= starts[-1]):
            raise IndexError(f"row indices must be in [0, {starts[-1]}), got {rows.min()}..{rows.max()}")
        shard_of = np.searchsorted(starts, rows, side="right") - 1
        group = self._group("r")
        out: dict[str, np.ndarray] = {}
        for name in names:
            shape, dtype = _shape_and_dtype(group, name)
            out[name] = np.empty((len(rows), *shape[1:]), dtype=dtype)
        for chunk in self._chunks(names, np.unique(shard_of).tolist(), by_shard):
            wanted = np.flatnonzero((rows >= chunk.start) & (rows < chunk.start + len(chunk)))
            for name in names:
                out[name][wanted] = chunk.arrays[name][rows[wanted] - chunk.start]
        return out


def _read(group: zarr.Group, name: str, rows: slice) -> np.ndarray:
    """Stored rows of one array; a store from before row kinds holds positions only, so its missing ``kind`` reads as
    ``POSITION_ROW`` for every row."""
    if name == "kind" and name not in group:
        return np.full(len(range(*rows.indices(_array(group, "valid").shape[0]))), POSITION_ROW, KIND_DTYPE)
    return np.asarray(_array(group, name)[rows])


def _shape_and_dtype(group: zarr.Group, name: str) -> tuple[tuple[int, ...], np.dtype]:
    if name == "kind" and name not in group:
        return _array(group, "valid").shape, np.dtype(KIND_DTYPE)
    array = _array(group, name)
    return array.shape, np.dtype(array.dtype)


def _array(group: zarr.Group, name: str) -> zarr.Array:
    """One of the store's arrays (the group holds nothing else)."""
    array = group[name]
    if not isinstance(array, zarr.Array):
        raise TypeError(f"{name} in the activation store is not an array")
    return array
