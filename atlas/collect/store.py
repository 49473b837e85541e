"""The activation store: one Zarr group, one chunk of rows per shard.

Shard i owns rows [i * rows_per_shard, (i + 1) * rows_per_shard) of every
array, always written whole (unused rows zero and ``valid`` false), so workers
write in parallel without touching each other's chunks and a rewrite after a
crash produces the same bytes. A shard counts as done only when its marker
file exists; the marker is written (atomically) after all its chunks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from atlas.io import write_json
from atlas.markers import read_marker, write_marker

_ARRAYS = ("activation", "attribution", "image_id", "y", "x", "label", "valid")


@dataclass
class Rows:
    """Collected rows, valid ones only, in store order."""

    activation: np.ndarray  # float32 [N, C]
    attribution: np.ndarray  # float32 [N, K] (K = 0 without attribution)
    image_id: np.ndarray  # int64 [N]
    y: np.ndarray  # int32 [N]
    x: np.ndarray  # int32 [N]
    label: np.ndarray  # int32 [N], -1 where the source has no labels

    def __len__(self) -> int:
        return len(self.image_id)


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

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def _done_dir(self) -> Path:
        return self.path / self.DONE

    @property
    def _rows(self) -> Path:
        return self.path / self.ROWS

    def layout(self) -> StoreLayout:
        stored = json.loads((self.path / self.LAYOUT).read_text())
        stored.pop("key", None)
        return StoreLayout(**stored)

    def exists_for(self, layout: StoreLayout, key: str) -> bool:
        stored = read_marker(self.path / self.LAYOUT)
        return stored is not None and stored.pop("key", None) == key and StoreLayout(**stored) == layout

    def create(self, layout: StoreLayout, key: str) -> None:
        """Lay out empty arrays (wiping anything older): chunks align with shards."""
        rows = layout.n_shards * layout.rows_per_shard
        chunk = (layout.rows_per_shard,)
        group = zarr.open_group(self._rows, mode="w")
        group.create_array("activation", shape=(rows, layout.channels), chunks=chunk + (layout.channels,), dtype="float32", fill_value=0.0)
        group.create_array(
            "attribution", shape=(rows, layout.n_classes), chunks=chunk + (max(layout.n_classes, 1),), dtype="float32", fill_value=0.0
        )
        for name, dtype in (("image_id", "int64"), ("y", "int32"), ("x", "int32"), ("label", "int32")):
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
        group = zarr.open_group(self._rows, mode="r+")
        for name in _ARRAYS:
            array = _array(group, name)
            data = np.ones(n, dtype=bool) if name == "valid" else getattr(rows, name)
            padded = np.zeros((cap,) + array.shape[1:], dtype=array.dtype)
            if n:
                padded[:n] = data
            array[start : start + cap] = padded
        write_json(self._done_dir / f"{shard_index:06d}.json", report)

    def reports(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self._done_dir.glob("*.json"))]

    def read(self) -> Rows:
        group = zarr.open_group(self._rows, mode="r")
        valid = np.asarray(_array(group, "valid")[:])
        arrays = {name: np.asarray(_array(group, name)[:])[valid] for name in _ARRAYS if name != "valid"}
        return Rows(**arrays)


def _array(group: zarr.Group, name: str) -> zarr.Array:
    """One of the store's arrays (the group holds nothing else)."""
    array = group[name]
    if not isinstance(array, zarr.Array):
        raise TypeError(f"{name} in the activation store is not an array")
    return array
