"""One shard of images -> rows of (activation, attribution, where they came from)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from atlas.collect.attribution import activations_at
from atlas.collect.sampling import sample_positions
from atlas.collect.store import Rows
from atlas.devices import device_of
from atlas.images.preprocess import to_tensor
from atlas.images.source import ImageRecord
from atlas.models.record import Preprocessing


@dataclass
class ShardResult:
    rows: Rows
    n_images: int
    skipped: list[dict[str, str]] = field(default_factory=list)


def _batches(records: Iterable[ImageRecord], size: int) -> Iterator[list[ImageRecord]]:
    batch: list[ImageRecord] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def collect_records(
    module: torch.nn.Module,
    layer: torch.nn.Module,
    preprocessing: Preprocessing,
    layer_hw: tuple[int, int],
    records: Iterable[ImageRecord],
    positions_per_image: int | Literal["all"],
    batch_size: int,
    seed: int,
    with_attribution: bool,
    n_classes: int,
) -> ShardResult:
    """Preprocess, sample positions and run the model in batches of ``batch_size`` rows.

    Unreadable images are skipped and reported, never raised.
    """
    parts: list[Rows] = []
    skipped: list[dict[str, str]] = []
    n_images = 0
    height, width = layer_hw
    device = device_of(module)  # decoding and preprocessing stay on the CPU; the batch goes where the model is
    images_per_batch = max(1, batch_size // (height * width if positions_per_image == "all" else positions_per_image))
    for batch in _batches(records, images_per_batch):
        good: list[ImageRecord] = []
        tensors: list[torch.Tensor] = []
        for record in batch:
            if record.image is None:
                skipped.append({"name": record.name, "error": record.error or "unreadable"})
                continue
            try:
                tensors.append(to_tensor(record.image, preprocessing))
            except (OSError, ValueError) as err:
                skipped.append({"name": record.name, "error": str(err)})
                continue
            good.append(record)
        if not good:
            continue
        n_images += len(good)
        positions = [sample_positions(r.image_id, height, width, positions_per_image, seed) for r in good]
        rows = np.concatenate([np.full(len(p), i) for i, p in enumerate(positions)])
        where = np.concatenate(positions)
        images = torch.stack(tensors).contiguous(memory_format=torch.channels_last).to(device)
        ids_of = np.array([r.image_id for r in good], dtype=np.int64)
        labels_of = np.array([-1 if r.label is None else r.label for r in good], dtype=np.int32)
        # At most batch_size rows a pass: attribution widens the batch to one row per position at the layer, so
        # an image with more positions than batch_size would otherwise run them all at once (1.5 GB at 144 rows
        # of EfficientNet-Lite0 at 224 px).
        for lo in range(0, len(rows), batch_size):
            part, at = rows[lo : lo + batch_size], where[lo : lo + batch_size]
            used, local = np.unique(part, return_inverse=True)
            subset = images if len(used) == len(good) else images[torch.as_tensor(used, device=device)]
            out = activations_at(module, layer, subset, local, at, with_attribution)
            attribution = out.attribution if out.attribution is not None else np.zeros((len(part), n_classes), np.float32)
            parts.append(Rows(out.activation, attribution, ids_of[part], at[:, 0].copy(), at[:, 1].copy(), labels_of[part]))
    if not parts:
        return ShardResult(Rows(*_empty(layer_channels=0, n_classes=n_classes)), 0, skipped)
    merged = Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("activation", "attribution", "image_id", "y", "x", "label")))
    return ShardResult(merged, n_images, skipped)


def _empty(layer_channels: int, n_classes: int) -> tuple[np.ndarray, ...]:
    return (
        np.zeros((0, layer_channels), np.float32),
        np.zeros((0, n_classes), np.float32),
        np.zeros(0, np.int64),
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
    )
