"""Whitening for feature visualisation: undo the layer's correlated directions.

A cell's mean activation is dominated by directions every image excites; the
renderer optimises along ``W @ direction`` instead, where W is the inverse of
the uncentred second moment, regularised so rare directions do not explode.
"""

from __future__ import annotations

import numpy as np


class Whitening:
    def __init__(self, eps: float = 1e-2) -> None:
        if eps <= 0:
            raise ValueError("eps must be positive")
        self.eps = eps

    def fit(self, activations: np.ndarray) -> "Whitening":
        x = np.asarray(activations, dtype=np.float64)
        second_moment = x.T @ x / max(len(x), 1)
        scale = np.trace(second_moment) / max(len(second_moment), 1)
        regularised = second_moment + self.eps * max(scale, 1e-12) * np.eye(len(second_moment))
        self.matrix_ = np.linalg.inv(regularised).astype(np.float32)
        return self

    def transform(self, directions: np.ndarray) -> np.ndarray:
        return np.asarray(directions, dtype=np.float32) @ self.matrix_.T
