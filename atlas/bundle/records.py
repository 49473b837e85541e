"""The bundle's JSON records as typed values: a cell, its examples and scores, the manifest and its levels.

Each record has exactly one JSON form (``from_json`` / ``to_json``), the one format ``activation-atlas/1``
fixes, so code reads ``cell.icon`` instead of spelling keys. Keys this version does not know are kept and
written back, so a round trip through a record loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


def _rest(document: Mapping[str, Any], known: tuple[str, ...]) -> JSON:
    """The keys of ``document`` a record does not type: carried through unchanged."""
    return {key: value for key, value in document.items() if key not in known}


@dataclass(frozen=True)
class TopClass:
    """One of a cell's classes with the highest mean attribution."""

    index: int
    label: str
    score: float

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> TopClass:
        return cls(int(document["index"]), str(document["label"]), float(document["score"]))

    def to_json(self) -> JSON:
        return {"index": self.index, "label": self.label, "score": self.score}


@dataclass(frozen=True)
class CellExample:
    """A dataset example of a cell: its row of the store, where it is, and its patch once the examples stage cut it."""

    row: int
    image_id: int
    y: int
    x: int
    patch: str | None = None

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> CellExample:
        patch = document.get("patch")
        return cls(int(document["row"]), int(document["image_id"]), int(document["y"]), int(document["x"]), patch)

    def to_json(self) -> JSON:
        document: JSON = {"row": self.row, "image_id": self.image_id, "y": self.y, "x": self.x}
        if self.patch is not None:
            document["patch"] = self.patch
        return document


@dataclass(frozen=True)
class Score:
    """An icon scored against a reference: fidelity (against its direction) or the path check (against its examples).

    ``rank``: where the icon's own cell comes among every cell of the grid, 0 = nearest.
    """

    cosine: float
    rank: int

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Score:
        return cls(document["cosine"], int(document["rank"]))

    @classmethod
    def maybe_from_json(cls, document: Mapping[str, Any] | None) -> Score | None:
        """path.json's entries: null for a cell with no readable example patch."""
        return None if document is None else cls.from_json(document)

    def to_json(self) -> JSON:
        return {"cosine": self.cosine, "rank": self.rank}


@dataclass(frozen=True)
class Cell:
    """One kept cell of a grid: grid.json's fields, and what assemble joins into cells.json.

    ``fidelity``, ``view`` and ``alpha`` are there once render ran (``view``: the full render behind an icon
    cropped to its receptive field; ``alpha``: its transparency map). ``path_checked`` says whether the path
    stage ran, since its ``path_check`` may be null (no example patch to check against).
    """

    i: int
    j: int
    count: int
    top_classes: tuple[TopClass, ...]
    icon: str
    examples: tuple[CellExample, ...]
    fidelity: Score | None = None
    view: str | None = None
    alpha: str | None = None
    path_check: Score | None = None
    path_checked: bool = False
    extra: JSON = field(default_factory=dict)

    _KEYS = ("i", "j", "count", "top_classes", "icon", "examples", "fidelity", "view", "alpha", "path_check")

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Cell:
        fidelity = document.get("fidelity")
        return cls(
            i=int(document["i"]),
            j=int(document["j"]),
            count=int(document["count"]),
            top_classes=tuple(TopClass.from_json(t) for t in document.get("top_classes", [])),
            icon=str(document["icon"]),
            examples=tuple(CellExample.from_json(e) for e in document.get("examples", [])),
            fidelity=None if fidelity is None else Score.from_json(fidelity),
            view=document.get("view"),
            alpha=document.get("alpha"),
            path_check=Score.maybe_from_json(document.get("path_check")),
            path_checked="path_check" in document,
            extra=_rest(document, cls._KEYS),
        )

    def to_json(self) -> JSON:
        document: JSON = {
            "i": self.i,
            "j": self.j,
            "count": self.count,
            "top_classes": [t.to_json() for t in self.top_classes],
            "icon": self.icon,
            "examples": [e.to_json() for e in self.examples],
        }
        if self.fidelity is not None:
            document["fidelity"] = self.fidelity.to_json()
        if self.view is not None:
            document["view"] = self.view
        if self.alpha is not None:
            document["alpha"] = self.alpha
        if self.path_checked:
            document["path_check"] = None if self.path_check is None else self.path_check.to_json()
        return {**document, **self.extra}


@dataclass(frozen=True)
class LevelSummary:
    """One grid's entry in the manifest's ``levels``; ``document`` holds every key (n_cells, dzi, fidelity, ...)."""

    grid: int
    cells: str | None
    directions: str | None
    document: JSON

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> LevelSummary:
        return cls(int(document["grid"]), document.get("cells"), document.get("directions"), dict(document))

    def to_json(self) -> JSON:
        return dict(self.document)


@dataclass(frozen=True)
class Manifest(Mapping[str, Any]):
    """manifest.json: the fields code reads, typed, and the whole document.

    It is also a read-only mapping of the document (``manifest["n_activations"]``), so keys this version does
    not type, such as a sub-bundle's ``subset``, stay readable and nothing is lost when it is written back.
    """

    format: str | None
    name: str | None
    model: str | None
    layer: str | None
    channels: int | None
    layer_shape: tuple[int, ...]
    input_size: int | None
    input_channels: int | None
    n_images: int
    n_activations: int
    labels: tuple[str, ...] | None
    levels: tuple[LevelSummary, ...]
    render: JSON | None
    config: JSON
    document: JSON = field(repr=False)
    layer_layout: JSON | None = None  # how the layer's output was read (name; tokens: prefix_tokens, grid); older: None

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Manifest:
        labels = document.get("labels")
        return cls(
            format=document.get("format"),
            name=document.get("name"),
            model=document.get("model"),
            layer=document.get("layer"),
            channels=document.get("channels"),
            layer_shape=tuple(int(v) for v in document.get("layer_shape") or ()),
            input_size=document.get("input_size"),
            input_channels=document.get("input_channels"),
            n_images=int(document.get("n_images") or 0),
            n_activations=int(document.get("n_activations") or 0),
            labels=None if labels is None else tuple(labels),
            levels=tuple(LevelSummary.from_json(level) for level in document.get("levels") or []),
            render=document.get("render"),
            config=document.get("config") or {},
            document=dict(document),
            layer_layout=document.get("layer_layout"),
        )

    def to_json(self) -> JSON:
        return dict(self.document)

    @property
    def grids(self) -> list[int]:
        return sorted(level.grid for level in self.levels)

    def level(self, grid: int) -> LevelSummary | None:
        return next((level for level in self.levels if level.grid == grid), None)

    def __getitem__(self, key: str) -> Any:
        return self.document[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.document)

    def __len__(self) -> int:
        return len(self.document)
