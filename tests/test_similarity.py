"""Linear CKA against its definition, its invariances, and the linear probe on rows that do and do not hold a class."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from atlas.compare.similarity import cka_matrix, cka_table, linear_cka, linear_probe, matrix_of


def cka_by_definition(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = XX^T, L = YY^T and the centring matrix H (Kornblith et al.)."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h)) / (n - 1) ** 2

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


@pytest.mark.parametrize(("n", "p", "q"), [(7, 3, 5), (40, 12, 4), (25, 30, 30)])
def test_cka_equals_the_kernel_definition_on_small_random_matrices(n: int, p: int, q: int) -> None:
    rng = np.random.default_rng(n + p + q)
    x, y = rng.normal(size=(n, p)) + 3.0, rng.normal(size=(n, q)) @ rng.normal(size=(q, q))  # uncentred on purpose
    assert linear_cka(x, y) == pytest.approx(cka_by_definition(x, y), rel=1e-9, abs=1e-12)
    mixed = np.hstack([x[:, :2] @ rng.normal(size=(2, q)), rng.normal(size=(n, 1))])  # partly shared structure
    assert linear_cka(x, mixed) == pytest.approx(cka_by_definition(x, mixed), rel=1e-9)


def test_cka_of_a_layer_with_itself_and_with_a_rotation_of_itself_is_one() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16))
    rotation = ortho_group.rvs(16, random_state=1)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ rotation) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, 5.0 * x @ rotation + 2.0) == pytest.approx(1.0, abs=1e-9)  # and isotropic scale, a shift
    stretched = x * np.linspace(0.1, 3.0, 16)  # not invariant to an anisotropic scaling
    assert linear_cka(x, stretched) < 0.99
    assert linear_cka(x, rng.normal(size=(200, 16))) < 0.2  # unrelated rows: near 0 (16 / 200 by chance)


def test_the_matrix_holds_every_pair_and_reads_back_from_json() -> None:
    rng = np.random.default_rng(3)
    reps = [rng.normal(size=(50, d)) for d in (4, 8, 2)]
    matrix = cka_matrix(reps)
    assert np.allclose(np.diag(matrix), 1.0) and np.allclose(matrix, matrix.T)
    for i in range(3):
        for j in range(3):
            if i != j:
                assert matrix[i, j] == pytest.approx(linear_cka(reps[i], reps[j]), rel=1e-12)
    names, back = matrix_of(cka_table(["a", "b", "c"], matrix))
    assert names == ["a", "b", "c"] and np.allclose(back, matrix, atol=1e-4)
    with pytest.raises(ValueError, match="same rows"):
        cka_matrix([reps[0], reps[1][:40]])
    with pytest.raises(ValueError, match="NaN"):
        linear_cka(np.full((5, 2), np.nan), reps[0][:5])


def test_the_probe_reads_a_class_that_is_there_and_not_one_that_is_not() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 100)
    means = rng.normal(scale=3.0, size=(4, 10))
    separable = means[labels] + rng.normal(size=(400, 10))
    held = linear_probe(separable, labels, seed=0)
    assert held is not None and held["accuracy"] > 0.95 and held["test_rows"] == 120 and held["classes"] == 4
    noise = linear_probe(rng.normal(size=(400, 10)), labels, seed=0)
    assert noise is not None and noise["accuracy"] < 0.45  # chance is 0.25
    assert linear_probe(separable, labels, seed=0) == held  # seeded
    assert linear_probe(separable, np.full(400, -1), seed=0) is None  # no labels
