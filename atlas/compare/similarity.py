"""How alike two layers' representations of the same rows are (linear CKA), and how much class a layer holds (a probe).

Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited") compares two layers
through the rows they share: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` on column-centred ``X`` ``[n, p]``
and ``Y`` ``[n, q]``. It is the HSIC of the two linear kernels ``XX^T`` and ``YY^T``, normalised: invariant to an
orthogonal rotation and an isotropic scaling of either side, not to other linear maps, so two layers with different
widths, or from different architectures, compare on one scale. The feature-space form costs ``O(n (p + q)^2)`` and
never builds the ``n x n`` kernels. No maintained package takes plain row matrices (the PyTorch ones hook models and
data loaders themselves), so this is the formula, checked against the kernel definition in ``tests/test_similarity.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _centred(x: np.ndarray, name: str) -> np.ndarray:
    rows = np.asarray(x, dtype=np.float64)
    if rows.ndim != 2 or len(rows) < 2:
        raise ValueError(f"{name}: expected rows x features with at least 2 rows, got shape {rows.shape}")
    if not np.isfinite(rows).all():
        raise ValueError(f"{name}: holds NaN or infinite values")
    return rows - rows.mean(axis=0)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same ``n`` rows (``x`` ``[n, p]``, ``y`` ``[n, q]``), in [0, 1];
    0 where either side is constant over the rows (no variance to align)."""
    return float(cka_matrix([x, y])[0, 1])


def cka_matrix(representations: Sequence[np.ndarray]) -> np.ndarray:
    """``[m, m]`` linear CKA between every pair of ``m`` representations of the same rows (1 on the diagonal)."""
    grams = []
    for k, x in enumerate(representations):
        a = _centred(x, f"representation {k}")
        grams.append((a, np.linalg.norm(a.T @ a)))
    if len({len(a) for a, _ in grams}) > 1:
        raise ValueError(f"every representation must hold the same rows; got {sorted({len(a) for a, _ in grams})}")
    m = len(grams)
    result = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            (a, na), (b, nb) = grams[i], grams[j]
            result[i, j] = result[j, i] = float(np.linalg.norm(b.T @ a) ** 2 / (na * nb)) if na * nb > 0 else 0.0
    for i, (_, norm) in enumerate(grams):
        result[i, i] = 1.0 if norm > 0 else 0.0
    return result


def linear_probe(
    rows: np.ndarray, labels: np.ndarray, seed: int, test_fraction: float = 0.3, max_iter: int = 1000
) -> dict[str, float | int] | None:
    """Held-out accuracy of a logistic regression from the rows to their labels (standardised, a seeded stratified
    split): how much of the class a layer states linearly. None without at least two labelled classes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    known = np.asarray(labels) >= 0
    x, y = np.asarray(rows, dtype=np.float64)[known], np.asarray(labels)[known]
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        return None
    stratify = y if counts.min() >= 2 and round(len(y) * test_fraction) >= len(classes) else None
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=stratify)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    model.fit(x_train, y_train)
    return {
        "accuracy": float(model.score(x_test, y_test)),
        "chance": float(np.max(np.unique(y_test, return_counts=True)[1]) / len(y_test)),  # the majority class's share
        "train_rows": len(y_train),
        "test_rows": len(y_test),
        "classes": len(classes),
    }


def cka_table(names: Sequence[str], matrix: np.ndarray) -> dict[str, dict[str, float]]:
    """The matrix as ``{row name: {column name: value}}`` for ``compare.json`` (rounded to 4 places)."""
    return {a: {b: round(float(matrix[i, j]), 4) for j, b in enumerate(names)} for i, a in enumerate(names)}


def matrix_of(table: Mapping[str, Mapping[str, float]]) -> tuple[list[str], np.ndarray]:
    """:func:`cka_table` read back: the names and the matrix."""
    names = list(table)
    return names, np.array([[table[a][b] for b in names] for a in names], dtype=np.float64)


__all__ = ["cka_matrix", "cka_table", "linear_cka", "linear_probe", "matrix_of"]
