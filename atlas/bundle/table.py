"""A grid's cells as one pandas table, so a notebook can sort, filter and plot them without walking records.

pandas is imported on first use (the ``notebook`` extra): reading a bundle never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from atlas.bundle.records import Cell, Score
from atlas.errors import AtlasError

if TYPE_CHECKING:
    import pandas


def cells_table(cells: Sequence[Cell]) -> pandas.DataFrame:
    """One row per kept cell: i, j, count, the top class (label, index, score), fidelity and, where the path stage
    ran, the path check. Score columns are NaN for a cell without that score (not rendered yet, no example patch)."""
    try:
        import pandas
    except ImportError:
        raise AtlasError("to_dataframe needs pandas: pip install 'activation-atlas[notebook]' (or pip install pandas)") from None
    path_ran = any(cell.path_checked for cell in cells)
    rows = [_cell_row(cell, path_ran) for cell in cells]
    columns = list(_cell_row(Cell(0, 0, 0, (), "", ()), path_ran))
    return pandas.DataFrame(rows, columns=columns)


def _cell_row(cell: Cell, path_ran: bool) -> dict[str, Any]:
    top = cell.top_classes[0] if cell.top_classes else None
    row: dict[str, Any] = {
        "i": cell.i,
        "j": cell.j,
        "count": cell.count,
        "top_class": top.label if top is not None else None,
        "top_class_index": top.index if top is not None else None,
        "top_class_score": top.score if top is not None else float("nan"),
        **_score_columns("fidelity", cell.fidelity),
        "n_examples": len(cell.examples),
        "icon": cell.icon,
    }
    if path_ran:
        row |= _score_columns("path_check", cell.path_check)
    return row


def _score_columns(name: str, score: Score | None) -> dict[str, float]:
    nan = float("nan")
    return {f"{name}_cosine": nan if score is None else score.cosine, f"{name}_rank": nan if score is None else float(score.rank)}
