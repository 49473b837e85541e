"""The saved dictionary as plain arrays and its forward, written once here so that anyone can recompute it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORWARD = (
    "z = topk(relu(((x / scale) - decoder_bias) @ encoder + encoder_bias), k); x_hat = (z @ decoder + decoder_bias) * scale"
    " (topk keeps each row's k largest entries and zeroes the rest)"
)


@dataclass(frozen=True)
class DictionaryWeights:
    """float32 arrays: encoder [C, F], encoder_bias [F], decoder [F, C] (unit rows), decoder_bias [C]; ``scale``
    divides the rows so they have unit mean squared norm."""

    encoder: np.ndarray
    encoder_bias: np.ndarray
    decoder: np.ndarray
    decoder_bias: np.ndarray
    k: int
    scale: float

    @property
    def features(self) -> int:
        return int(self.encoder.shape[1])


def encode(weights: DictionaryWeights, rows: np.ndarray) -> np.ndarray:
    """float32 [N, F]: each row's feature activations, at most ``k`` non-zero (the documented forward)."""
    x = np.asarray(rows, np.float32) / np.float32(weights.scale)
    pre = np.maximum((x - weights.decoder_bias) @ weights.encoder + weights.encoder_bias, 0.0)
    k = min(weights.k, pre.shape[1])
    keep = np.argpartition(-pre, k - 1, axis=1)[:, :k]
    z = np.zeros_like(pre)
    np.put_along_axis(z, keep, np.take_along_axis(pre, keep, axis=1), axis=1)
    return z


def reconstruct(weights: DictionaryWeights, z: np.ndarray) -> np.ndarray:
    """float32 [N, C]: rows rebuilt from their feature activations, in the store's units."""
    return (z @ weights.decoder + weights.decoder_bias) * np.float32(weights.scale)


def own_feature_ranks(weights: DictionaryWeights, rows: np.ndarray, own: np.ndarray) -> np.ndarray:
    """int64 [N]: how many features the encoder drives higher than row i's ``own[i]`` feature (0 = its own is the
    most active): the dictionary's own view of an icon, besides the cosine to its decoder direction."""
    x = np.asarray(rows, np.float32) / np.float32(weights.scale)
    pre = np.maximum((x - weights.decoder_bias) @ weights.encoder + weights.encoder_bias, 0.0)
    mine = pre[np.arange(len(pre)), np.asarray(own, np.int64)]
    return np.asarray((pre > mine[:, None]).sum(axis=1), np.int64)
