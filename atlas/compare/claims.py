"""The newsletter's statements about activation functions, tested against this experiment's measurements.

Each claim names what was measured, the measured numbers, the rule that
decides it, and whether it held. A claim whose variants were not trained is
reported as not tested, never guessed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from atlas.models.zoo import make_activation

COST_ELEMENTS = 1 << 21  # about the activation volume of one training batch of the comparison nets
DEAD_FREE = ("leaky_relu", "elu", "gelu")
COST_MARGIN = 1.05  # a difference under 5% is not "cheaper": it is within this machine's run-to-run noise


def activation_cost(names: list[str], repeats: int = 40, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per forward + backward of each activation alone, every repeat, interleaved so load hits all alike.

    The incoming gradient is allocated once and the first round is a warm-up, so the times hold the function's
    own work and not shared overhead that would pull every ratio towards 1.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(COST_ELEMENTS, generator=generator).requires_grad_(True)
    upstream = torch.ones(COST_ELEMENTS)
    modules = {name: make_activation(name) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats + 1):
        for name, module in modules.items():
            started = time.perf_counter()
            torch.autograd.grad(module(x), x, upstream)
            if round_:
                times[name].append(time.perf_counter() - started)
    return times


def cost_ratio(times: dict[str, list[float]], name: str, baseline: str = "relu") -> tuple[float, float, float]:
    """Median and quartiles of ``name``'s time over ``baseline``'s, repeat by repeat (both timed back to back)."""
    ratios = np.asarray(times[name]) / np.asarray(times[baseline])
    low, median, high = np.percentile(ratios, [25, 50, 75])
    return float(median), float(low), float(high)


ACCURACY_MARGIN = 0.005  # half a point: about one standard error of a 0.85 accuracy on 10,000 test images (0.0036), rounded up
SMOOTH = ("gelu", "silu", "mish")


def _missing(needed: tuple[str, ...], variants: dict[str, Any]) -> list[str]:
    return [name for name in needed if name not in variants]


def _row(claim: str, measure: str, measured: str, rule: str, held: bool | None) -> dict[str, Any]:
    return {"claim": claim, "measure": measure, "measured": measured, "rule": rule, "held": held}


def check_claims(
    variants: dict[str, dict[str, Any]],
    cost: dict[str, list[float]],
    architecture: str = "vgg",
    cka: dict[str, dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """``variants``: activation name -> its metrics.json; ``cost``: from :func:`activation_cost`; ``architecture``: the
    trained one (``train.architecture``); ``cka``: linear CKA between the variants' compared layers, by name."""
    rows = []

    claim = "ReLU is cheaper to compute than sigmoid and tanh"
    if all(n in cost for n in ("relu", "sigmoid", "tanh")):
        ratios = {n: cost_ratio(cost, n) for n in ("sigmoid", "tanh")}
        measured = "forward+backward time over ReLU's (median, quartiles): " + ", ".join(
            f"{n} {m:.2f}x ({lo:.2f}-{hi:.2f})" for n, (m, lo, hi) in ratios.items()
        )
        epochs = {n: variants[n]["seconds_per_epoch"] for n in ("relu", "sigmoid", "tanh") if n in variants}
        if len(epochs) == 3:
            measured += "; whole-network s/epoch " + ", ".join(f"{n} {s:.1f}" for n, s in epochs.items())
        held = all(m > COST_MARGIN and lo > 1.0 for m, lo, _hi in ratios.values())
        rows.append(_row(claim, f"time of the function alone on 2M values, {len(cost['relu'])} interleaved repeats", measured,
                         f"held if sigmoid and tanh each take over {COST_MARGIN:.2f}x ReLU's time (median) "
                         "and longer in at least 3 of 4 paired repeats (lower quartile above 1)", held))  # fmt: skip
    else:
        rows.append(_row(claim, "activation cost", "relu, sigmoid or tanh not in this comparison", "", None))

    claim = "ReLU leaves dead units while Leaky ReLU, ELU and GELU do not"
    missing = _missing(("relu", *DEAD_FREE), variants)
    if not missing:
        dead = {n: variants[n]["units"]["dead_fraction"] for n in ("relu", *DEAD_FREE)}
        measured = ", ".join(f"{n} {100 * d:.1f}%" for n, d in dead.items())
        held = dead["relu"] > 0 and all(dead[n] == 0 for n in DEAD_FREE)
        rows.append(_row(claim, "share of units with |f'(x)| below the threshold on every test input", measured,
                         "held if ReLU has dead units and the others have none", held))  # fmt: skip
    else:
        rows.append(_row(claim, "dead units", f"not trained: {', '.join(missing)}", "", None))

    claim = "Sigmoid's gradients vanish with depth"
    if not _missing(("relu", "sigmoid"), variants):
        start = {n: _depth_decay(variants[n], "grad_norms_first_steps") for n in ("relu", "sigmoid")}
        epoch = {n: _depth_decay(variants[n], "grad_norms") for n in ("relu", "sigmoid")}
        measured = (
            f"first-conv / classifier gradient norm over the first steps: sigmoid {start['sigmoid']:.2g}, ReLU {start['relu']:.2g} "
            f"(whole first epoch: sigmoid {epoch['sigmoid']:.2g}, ReLU {epoch['relu']:.2g})"
        )
        held = start["sigmoid"] < 0.1 * start["relu"]
        rows.append(_row(claim, "mean gradient norm of the first conv over the classifier's, first 50 steps", measured,
                         "held if sigmoid's ratio is under a tenth of ReLU's at the start of training", held))  # fmt: skip
    else:
        rows.append(_row(claim, "gradient norm by depth", "relu or sigmoid not trained", "", None))

    claim = "Tanh is zero-centred and sigmoid is not"
    if not _missing(("tanh", "sigmoid"), variants):
        centre = {n: _centring(variants[n]) for n in ("tanh", "sigmoid")}
        measured = (
            f"|mean| / std of each unit's output (mean over units and layers): tanh {centre['tanh']:.2f}, sigmoid {centre['sigmoid']:.2f}"
        )
        held = centre["tanh"] < 0.5 and centre["sigmoid"] >= 0.5
        rows.append(_row(claim, "each unit's mean output relative to its spread, on the test set", measured,
                         "zero-centred means |mean| < std / 2: held if tanh is and sigmoid is not", held))  # fmt: skip
    else:
        rows.append(_row(claim, "zero-centred outputs", "tanh or sigmoid not trained", "", None))
    rows.append(_transformer_claim(variants, architecture))
    rows.append(_smooth_claim(cka))
    return rows


def _transformer_claim(variants: dict[str, dict[str, Any]], architecture: str) -> dict[str, Any]:
    claim = "GELU is the transformer default because it trains better there than ReLU"
    measure = "test accuracy after the same schedule, and the first layer's gradient norm over the classifier's"
    if architecture != "vit":
        return _row(claim, measure, f"not a transformer: train.architecture is {architecture}", "", None)
    missing = _missing(("relu", "gelu"), variants)
    if missing:
        return _row(claim, measure, f"not trained: {', '.join(missing)}", "", None)
    accuracy = {n: variants[n]["test_accuracy"] for n in ("gelu", "relu")}
    flow = {n: _depth_decay(variants[n], "grad_norms_first_steps") for n in ("gelu", "relu")}
    measured = (
        f"test accuracy GELU {accuracy['gelu']:.3f}, ReLU {accuracy['relu']:.3f}; first-layer / classifier gradient "
        f"norm over the first steps GELU {flow['gelu']:.2g}, ReLU {flow['relu']:.2g}"
    )
    held = accuracy["gelu"] - accuracy["relu"] > ACCURACY_MARGIN
    return _row(claim, measure, measured,
                f"held if GELU's test accuracy exceeds ReLU's by more than {ACCURACY_MARGIN:.3f} (the gradient ratio is reported, "
                "not ruled on)", held)  # fmt: skip


def _smooth_claim(cka: dict[str, dict[str, float]] | None) -> dict[str, Any]:
    claim = "The smooth ReLU-likes (GELU, SiLU, Mish) learn representations like each other's, unlike ReLU's"
    measure = "linear CKA between the variants' compared layers, on the same rows"
    missing = _missing(("relu", *SMOOTH), cka or {})
    if cka is None or missing:
        return _row(claim, measure, f"not compared: {', '.join(missing) if cka else 'no CKA'}", "", None)
    among = [cka[a][b] for i, a in enumerate(SMOOTH) for b in SMOOTH[i + 1 :]]
    with_relu = [cka[a]["relu"] for a in SMOOTH]
    mean_among, mean_relu = sum(among) / len(among), sum(with_relu) / len(with_relu)
    measured = (
        f"mean CKA among GELU, SiLU, Mish {mean_among:.3f}; each with ReLU {mean_relu:.3f} ("
        + ", ".join(f"{a} {cka[a]['relu']:.2f}" for a in SMOOTH)
        + ")"
    )
    held = min(among) > max(with_relu)
    return _row(claim, measure, measured, "held if every pair among the three is more alike than any of them is to ReLU", held)


def _depth_decay(metrics: dict[str, Any], key: str) -> float:
    norms = metrics["history"][0][key]
    return norms[0] / max(norms[-1], 1e-30)


def _centring(metrics: dict[str, Any]) -> float:
    layers = metrics["units"]["layers"]
    return float(sum(layer["centring"] for layer in layers) / len(layers))
