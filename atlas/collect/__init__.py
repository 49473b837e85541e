"""Activation collection: sample positions, forward to the layer, attribute, store rows."""

from atlas.collect.attribution import PositionRows, activations_at
from atlas.collect.collector import ShardResult, collect_records
from atlas.collect.sampling import sample_positions
from atlas.collect.store import CLASS_TOKEN_ROW, POSITION_ROW, ROW_FIELDS, ActivationStore, RowChunk, Rows, StoreLayout

__all__ = [
    "CLASS_TOKEN_ROW",
    "POSITION_ROW",
    "ROW_FIELDS",
    "ActivationStore",
    "PositionRows",
    "RowChunk",
    "Rows",
    "ShardResult",
    "StoreLayout",
    "activations_at",
    "collect_records",
    "sample_positions",
]
