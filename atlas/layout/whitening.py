"""Whitening for feature visualisation: undo the layer's correlated directions.

A cell's mean activation is dominated by directions every image excites; the
renderer optimises along ``W @ direction`` instead, where W is the inverse of
the uncentred second moment, regularised so rare directions do not explode.
A scikit-learn estimator, so it can be cloned and its ``eps`` read back.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted


class Whitening(TransformerMixin, BaseEstimator):
    """``matrix_ = (M + eps * tr(M)/C * I)^-1`` for the uncentred second moment M; eps is relative to M's scale."""

    # Learned in ``fit`` (absent before it, which is what ``check_is_fitted`` looks for).
    n_features_in_: int
    matrix_: np.ndarray

    def __init__(self, eps: float = 1e-2) -> None:
        self.eps = eps

    def fit(self, X: np.ndarray, y: None = None) -> Whitening:
        """Learn ``matrix_`` ([C, C] float32) from ``X`` ([N, C] activations, N >= 1)."""
        x = check_array(X, dtype=np.float64)
        return self.fit_moment(x.T @ x, len(x))

    def fit_moment(self, moment_sum: np.ndarray, n: int) -> Whitening:
        """Learn ``matrix_`` from ``sum_i x_i x_i^T`` over ``n`` rows: sums of chunks add up, so no one holds every row."""
        if not isinstance(self.eps, Real) or isinstance(self.eps, bool) or not np.isfinite(self.eps) or self.eps <= 0:
            raise ValueError(f"eps must be a positive finite number, got {self.eps!r}")
        moment_sum = np.asarray(moment_sum, dtype=np.float64)
        if moment_sum.ndim != 2 or moment_sum.shape[0] != moment_sum.shape[1] or n < 1:
            raise ValueError(f"expected a square [C, C] moment sum over n >= 1 rows, got shape {moment_sum.shape} and n={n}")
        self.n_features_in_ = moment_sum.shape[1]
        second_moment = moment_sum / n
        scale = np.trace(second_moment) / max(len(second_moment), 1)
        regularised = second_moment + self.eps * max(scale, 1e-12) * np.eye(len(second_moment))
        self.matrix_ = np.linalg.inv(regularised).astype(np.float32)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``W @ d`` for each direction d: one [C] vector or rows of [K, C]."""
        check_is_fitted(self, "matrix_")
        directions = np.asarray(X, dtype=np.float32)
        if directions.ndim not in (1, 2) or directions.shape[-1] != self.n_features_in_:
            raise ValueError(f"expected directions of {self.n_features_in_} features ([C] or [K, C]), got shape {directions.shape}")
        return directions @ self.matrix_.T
