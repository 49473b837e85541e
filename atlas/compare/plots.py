"""The comparison's figures (matplotlib, written as PNG): functions, training curves, gradients by depth, histograms,
and the variants' sparse dictionaries."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from atlas.io import write_bytes


def _figure(columns: int, rows: int, size: tuple[float, float]):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(rows, columns, figsize=size, squeeze=False)


def _save(plt, fig, path: Path) -> None:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def plot_functions(names: list[str], path: Path) -> None:
    """Each activation f(x) and its derivative f'(x) on [-5, 5], derivative from autograd."""
    import torch

    from atlas.models.zoo import make_activation

    columns = min(4, len(names))
    rows = (len(names) + columns - 1) // columns
    plt, fig, axes = _figure(columns, rows, (3.2 * columns, 2.4 * rows))
    x = torch.linspace(-5, 5, 401, requires_grad=True)
    for ax, name in zip(axes.flat, names):
        y = make_activation(name)(x)
        (grad,) = torch.autograd.grad(y.sum(), x)
        ax.plot(x.detach(), y.detach(), label="f(x)")
        ax.plot(x.detach(), grad, label="f'(x)", linestyle="--")
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_title(name)
        ax.set_ylim(-1.5, 3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(loc="upper left", fontsize=8)
    _save(plt, fig, path)


def plot_training(metrics: dict[str, dict[str, Any]], path: Path) -> None:
    plt, fig, axes = _figure(2, 1, (10, 3.6))
    for name, m in metrics.items():
        epochs = [h["epoch"] for h in m["history"]]
        axes[0, 0].plot(epochs, [h["train_loss"] for h in m["history"]], marker="o", label=name)
        axes[0, 1].plot(epochs, [h["test_accuracy"] for h in m["history"]], marker="o", label=name)
    axes[0, 0].set(title="training loss", xlabel="epoch", yscale="log")
    axes[0, 1].set(title="test accuracy", xlabel="epoch")
    axes[0, 1].legend(fontsize=8)
    _save(plt, fig, path)


def plot_gradients(metrics: dict[str, dict[str, Any]], path: Path) -> None:
    """Mean gradient norm of each conv/linear weight by depth, over the first steps and the first epoch."""
    plt, fig, axes = _figure(2, 1, (11, 3.8))
    for ax, key, title in ((axes[0, 0], "grad_norms_first_steps", "first 50 steps"), (axes[0, 1], "grad_norms", "whole first epoch")):
        layers: list[str] = []
        for name, m in metrics.items():
            norms = m["history"][0][key]
            layers = m["grad_norm_layers"]
            ax.plot(range(len(norms)), norms, marker="o", label=name)
        ax.set(title=f"gradient norm by depth ({title})", yscale="log", ylabel="mean L2 norm of the gradient")
        ax.set_xticks(range(len(layers)), [n.removesuffix(".weight") for n in layers], rotation=45, ha="right", fontsize=7)
    axes[0, 1].legend(fontsize=8)
    _save(plt, fig, path)


def plot_histograms(histograms: dict[str, dict[str, Any]], layer: str, path: Path) -> None:
    columns = min(4, len(histograms))
    rows = (len(histograms) + columns - 1) // columns
    plt, fig, axes = _figure(columns, rows, (3.2 * columns, 2.2 * rows))
    for ax, (name, h) in zip(axes.flat, histograms.items()):
        edges = np.asarray(h["edges"])
        ax.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge")
        ax.set_title(f"{name}: {layer}", fontsize=9)
        ax.set_yscale("log")
    for ax in list(axes.flat)[len(histograms) :]:
        ax.axis("off")
    _save(plt, fig, path)


def plot_dictionaries(dictionaries: dict[str, dict[str, Any]], path: Path) -> None:
    """Per variant, its dictionary's variance explained, share of dead features and mean feature density (one shape)."""
    names = list(dictionaries)
    shape = next(iter(dictionaries.values()))
    plt, fig, axes = _figure(3, 1, (11, 3.2))
    panels = (
        ("variance_explained", "fraction of variance explained", (0.0, 1.0)),
        ("dead_fraction", "dead features (never active)", (0.0, None)),
        ("mean_density", "mean feature density (share of rows active)", (0.0, None)),
    )
    for ax, (key, title, limits) in zip(axes.flat, panels):
        ax.bar(range(len(names)), [dictionaries[n][key] for n in names])
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(*limits)
    fig.suptitle(f"TopK dictionaries of {shape['features']} features, k = {shape['k']}", fontsize=10)
    _save(plt, fig, path)


def plot_cka(matrices: dict[str, tuple[list[str], np.ndarray]], path: Path) -> None:
    """One linear-CKA heatmap per title (names on both axes, values written in the cells), side by side."""
    columns = len(matrices)
    plt, fig, axes = _figure(columns, 1, (max(3.8, 0.5 * max(len(n) for n, _ in matrices.values()) + 2.2) * columns, 4.2))
    image = None
    for ax, (title, (names, matrix)) in zip(axes.flat, matrices.items()):
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(title, fontsize=9)
        if len(names) <= 12:
            for i in range(len(names)):
                for j in range(len(names)):
                    ax.text(
                        j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white" if matrix[i, j] < 0.6 else "black"
                    )
    if image is not None:
        fig.colorbar(image, ax=list(axes.flat), shrink=0.8, label="linear CKA")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
