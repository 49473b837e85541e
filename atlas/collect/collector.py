"""One shard of images -> rows of (activation, attribution, where they came from).

A row whose activation or attribution holds NaN or an infinity never reaches the
store: with ``nonfinite="drop"`` it is dropped and its image reported (how many
of its rows, and what was wrong), with ``"stop"`` the first such image ends the
shard with an :class:`~atlas.errors.AtlasError` naming it. Nothing downstream
(layout, grid, directions, the viewer) ever sees a non-finite number.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from atlas.collect.attribution import activations_at
from atlas.collect.sampling import sample_positions
from atlas.collect.store import CLASS_TOKEN_ROW, KIND_DTYPE, POSITION_ROW, ROW_FIELDS, Rows
from atlas.errors import AtlasError
from atlas.images.preprocess import to_tensor
from atlas.images.source import ImageRecord, display_name, one_line
from atlas.models.layouts import CLASS_TOKEN_POSITION, require_class_token
from atlas.models.view import ModelView

CLASS_TOKEN_AT = np.array([[CLASS_TOKEN_POSITION, CLASS_TOKEN_POSITION]], dtype=np.int32)
NO_POSITIONS = np.zeros((0, 2), dtype=np.int32)


@dataclass
class ShardResult:
    rows: Rows
    n_images: int  # images that gave at least one stored row
    skipped: list[dict[str, str]] = field(default_factory=list)
    nonfinite: list[dict[str, Any]] = field(default_factory=list)  # per image: name, image_id, rows dropped, what was wrong

    @property
    def n_zero(self) -> int:
        """Stored rows whose activation is zero in every channel (a dead layer gives nothing else)."""
        return int((~self.rows.activation.any(axis=1)).sum()) if len(self.rows) else 0


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
    view: ModelView,
    records: Iterable[ImageRecord],
    positions_per_image: int | Literal["all"],
    batch_size: int,
    seed: int,
    with_attribution: bool,
    n_classes: int,
    nonfinite: Literal["drop", "stop"] = "drop",
    class_token: bool = False,
    positions: Mapping[int, np.ndarray] | None = None,
) -> ShardResult:
    """Preprocess, sample positions and run the model in batches of ``batch_size`` rows.

    Unreadable images are skipped and reported, never raised. Rows that are not
    finite are dropped and reported per image, or with ``nonfinite="stop"`` the
    first image that gives one raises an AtlasError naming it. With ``class_token``
    each image also gives its class token's row (kind ``CLASS_TOKEN_ROW``, at
    ``y = x = -1``), on top of its ``positions_per_image`` patch rows. ``positions``: each image's (y, x) rows given
    (another layer's rows mapped to this one, class-token rows included), in place of sampling; an image absent from
    it gives no row.
    """
    if class_token:
        require_class_token(view.layout, view.module, view.layer_name)
    parts: list[Rows] = []
    skipped: list[dict[str, str]] = []
    bad_rows: dict[int, dict[str, Any]] = {}  # image id -> its report, in the order first met
    kept_ids: set[int] = set()
    height, width = view.grid
    device = view.device  # decoding and preprocessing stay on the CPU; the batch goes where the model is
    per_image = (height * width if positions_per_image == "all" else positions_per_image) + int(class_token)
    if positions is not None:
        per_image = max([1, *(len(p) for p in positions.values())])
    images_per_batch = max(1, batch_size // per_image)
    for batch in _batches(records, images_per_batch):
        good: list[ImageRecord] = []
        tensors: list[torch.Tensor] = []
        for record in batch:
            if record.image is None:
                skipped.append({"name": display_name(record.name), "error": record.error or "unreadable"})
                continue
            try:
                tensors.append(to_tensor(record.image, view.preprocessing))
            except (OSError, ValueError) as err:
                skipped.append({"name": display_name(record.name), "error": str(err)})
                continue
            good.append(record)
        if not good:
            continue
        if positions is not None:
            at_image = [positions.get(r.image_id, NO_POSITIONS) for r in good]
        else:
            at_image = [sample_positions(r.image_id, height, width, positions_per_image, seed) for r in good]
            if class_token:
                at_image = [np.concatenate([p, CLASS_TOKEN_AT]) for p in at_image]
        rows = np.concatenate([np.full(len(p), i) for i, p in enumerate(at_image)])
        where = np.concatenate(at_image)
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
            out = activations_at(view, subset, local, at, with_attribution)
            attribution = out.attribution if out.attribution is not None else np.zeros((len(part), n_classes), np.float32)
            kind = np.where(at[:, 0] == CLASS_TOKEN_POSITION, CLASS_TOKEN_ROW, POSITION_ROW).astype(KIND_DTYPE)
            rows_here = Rows(out.activation, attribution, ids_of[part], at[:, 0].copy(), at[:, 1].copy(), labels_of[part], kind)
            finite = np.isfinite(rows_here.activation).all(axis=1) & np.isfinite(rows_here.attribution).all(axis=1)
            if not finite.all():
                _report_nonfinite(rows_here, ~finite, [good[i] for i in used], bad_rows, nonfinite, view.layer_name)
                rows_here = Rows(*(getattr(rows_here, f)[finite] for f in ROW_FIELDS))
            kept_ids.update(rows_here.image_id.tolist())
            parts.append(rows_here)
    nonfinite_report = list(bad_rows.values())
    if not parts:
        return ShardResult(Rows(*_empty(layer_channels=0, n_classes=n_classes)), 0, skipped, nonfinite_report)
    merged = Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ROW_FIELDS))
    return ShardResult(merged, len(kept_ids), skipped, nonfinite_report)


def _report_nonfinite(
    rows: Rows,
    bad: np.ndarray,
    records: list[ImageRecord],
    reports: dict[int, dict[str, Any]],
    mode: Literal["drop", "stop"],
    layer_name: str,
) -> None:
    """Count the bad rows per image (``records``: this pass's images, any order); with ``stop``, raise for the first."""
    names = {r.image_id: r.name for r in records}
    for row in np.flatnonzero(bad):
        image_id = int(rows.image_id[row])
        what = _what_is_wrong(rows.activation[row], "activation") or _what_is_wrong(rows.attribution[row], "attribution")
        name = display_name(names[image_id])
        if mode == "stop":
            raise AtlasError(
                f"collect.nonfinite=stop: image '{one_line(name)}' (image id {image_id}) gives {what} at layer {layer_name!r}; set "
                "collect.nonfinite=drop to drop and count such rows, or fix the model (its weights, preprocessing or layer)"
            )
        entry = reports.setdefault(image_id, {"name": name, "image_id": image_id, "rows": 0, "error": what})
        entry["rows"] += 1


def _what_is_wrong(values: np.ndarray, field: str) -> str | None:
    if np.isnan(values).any():
        return f"NaN in its {field}"
    if np.isinf(values).any():
        return f"infinity in its {field}"
    return None


def _empty(layer_channels: int, n_classes: int) -> tuple[np.ndarray, ...]:
    return (
        np.zeros((0, layer_channels), np.float32),
        np.zeros((0, n_classes), np.float32),
        np.zeros(0, np.int64),
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
    )
