"""Draw ``docs/scaling.png`` from ``outputs/benchmarks/scaling.json`` (written by test_scaling.py).

Two log-log panels against the number of activations: seconds per stage (and the
whole run), and peak resident memory of the driver and of the largest worker.
A dotted line of slope 1 through the smallest run shows what linear growth
would look like. Run: ``python tests/benchmarks/plot_scaling.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "outputs" / "benchmarks" / "scaling.json"
TARGET = REPO / "docs" / "scaling.png"
STAGES = ("collect", "layout", "grid", "render", "examples", "tiles")


def main() -> None:
    data = json.loads(SOURCE.read_text())
    runs = sorted(data["fashion"].values(), key=lambda r: r["rows"])
    rows = [r["rows"] for r in runs]
    fig, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in STAGES:
        seconds = [max(r["stages"].get(stage, 0.0), 0.05) for r in runs]
        time_axis.plot(rows, seconds, marker="o", label=stage)
    total = [sum(r["stages"].values()) for r in runs]
    time_axis.plot(rows, total, marker="s", color="black", linewidth=2, label="whole run")
    time_axis.plot(rows, [total[0] * n / rows[0] for n in rows], ":", color="grey", label="slope 1")
    plain = data.get("fashion_plain_umap_100k", {}).get("seconds")
    if plain:
        time_axis.axhline(plain, color="tab:red", linestyle="--", linewidth=1, label="plain UMAP, 100k rows")
    time_axis.set(xscale="log", yscale="log", xlabel="activations (rows)", ylabel="seconds", title="time per stage")
    time_axis.legend(fontsize=7, ncol=2)
    for key, label in (("driver_mb", "driver"), ("workers_mb", "largest worker")):
        memory_axis.plot(rows, [r[key] for r in runs], marker="o", label=label)
    memory_axis.plot(rows, [runs[0]["workers_mb"] * n / rows[0] for n in rows], ":", color="grey", label="slope 1")
    memory_axis.axhline(1500, color="tab:red", linestyle="--", linewidth=1, label="target 1.5 GB")
    memory_axis.set(xscale="log", yscale="log", xlabel="activations (rows)", ylabel="peak resident memory (MB)", title="peak memory")
    memory_axis.legend(fontsize=7)
    fig.suptitle("atlas run on a Fashion-MNIST CNN (64 channels, 10 classes), 2 cores", fontsize=10)
    fig.tight_layout()
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(TARGET, dpi=120)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
