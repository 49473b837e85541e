"""The ``device`` key: validated, resolved against this torch, kept out of CPU cache keys, one GPU worker per GPU."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from atlas.config import AtlasConfig, RenderConfig, load_config
from atlas.devices import CPU, key_part, resolve_device
from atlas.errors import AtlasError
from atlas_pipelines.commands.cli import main
from atlas_pipelines.engine.executor import gpu_worker_envs, gpu_worker_specs, start_gpu_cluster
from atlas_pipelines.stages.render import render_settings

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_values_validate(value: str) -> None:
    assert load_config(None, [f"device={value}"]).device == value


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "CPU", "mps", "0"])
def test_a_bad_device_is_one_line_naming_the_key_and_the_choices(value: str) -> None:
    with pytest.raises(AtlasError) as info:
        load_config(None, [f"device={value}"])
    message = str(info.value)
    assert "'device'" in message and "\n" not in message
    assert "auto, cpu, cuda or cuda:N" in message or "valid string" in message, message  # device=0 reads as a number


def test_auto_picks_cuda_only_where_torch_sees_a_gpu() -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == CPU
    assert AtlasConfig().device == "auto"


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA; the no-GPU error cannot happen here")
def test_asking_for_cuda_without_one_fails_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for setting in ("cuda", "cuda:1"):
        with pytest.raises(AtlasError, match=f"device='{setting}'.*sees no CUDA GPU.*--set device=cpu"):
            resolve_device(setting)
    # from the command line: exit 2, one line, and nothing written
    assert main(["run", "--set", "device=cuda", "--out", str(tmp_path), "--name", "gpu", "--scheduler", "sync"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "device='cuda'" in err and "--set device=cpu" in err, err
    assert not (tmp_path / "gpu").exists()


@pytest.mark.skipif(NO_CUDA, reason="needs CUDA: the out-of-range index check")
def test_a_gpu_index_past_the_last_fails_with_the_fix() -> None:
    count = torch.cuda.device_count()
    with pytest.raises(AtlasError, match=f"only {count} CUDA GPU"):
        resolve_device(f"cuda:{count}")


def _run(device: torch.device, **render: object) -> SimpleNamespace:
    """What render_settings reads of a run: its config and resolved device."""
    return SimpleNamespace(config=AtlasConfig(render=RenderConfig(**render)), device=device)  # type: ignore[arg-type]


def test_the_cpu_render_key_holds_every_setting_that_changes_icons_and_no_device() -> None:
    """The render stage's key is its section as it is (issue 21 removed the shims that kept older keys alive): on the
    CPU no device part, ``batch_size`` as resolved, and every setting that changes an icon changes the key; the
    settings that change nothing (``proximity`` without accentuate, ``probe_cells`` without a probe) leave it alone."""
    assert key_part(CPU) == []
    default = render_settings(_run(CPU))  # type: ignore[arg-type]
    assert len(default) == 3 and default[1] == 0, "the section, the seed and the probe's path term, no device on the CPU"
    assert default[2] == {"path_check": {"layers": "auto"}, "examples_per_cell": 6}
    now = default[0]
    assert now["batch_size"] == RenderConfig().batch_size_on("cpu") == 64
    assert (now["whiten"], now["cossim_power"], now["learning_rate"], now["crop_to_field"]) == ("auto", "auto", "auto", True)
    assert (now["contrast"], now["tries"], now["param"], now["precision"], now["alpha"]) == ("auto", "auto", "fourier", "fp32", False)
    assert "proximity" not in now and now["probe_cells"] == RenderConfig().probe_cells
    assert (now["steps"], now["coarse_steps"]) == ("auto", "auto")
    fixed = {"whiten": "full", "cossim_power": 4.0, "learning_rate": 0.05, "crop_to_field": False, "contrast": False, "tries": 1}
    assert "probe_cells" not in render_settings(_run(CPU, **fixed))[0], "no 'auto': no probe"  # type: ignore[arg-type]
    base = render_settings(_run(CPU, **fixed))  # type: ignore[arg-type]
    assert render_settings(_run(CPU, proximity=3.0, **fixed)) == base, "proximity without accentuate changes nothing"  # type: ignore[arg-type]
    changes = (
        {"param": "maco"}, {"param": "accentuate"}, {"alpha": True}, {"whiten": "dot"}, {"whiten": "off"}, {"contrast": True},
        {"tries": 4}, {"crop_to_field": True}, {"steps": 128}, {"coarse_steps": 0}, {"icon_size": 64}, {"precision": "bf16"}, {"batch_size": 32},
    )  # fmt: skip
    keys = [render_settings(_run(CPU, **{**fixed, **changed})) for changed in changes]  # type: ignore[arg-type]
    assert all(key != base for key in keys), [c for c, k in zip(changes, keys) if k == base]


def test_gpu_and_bf16_change_the_render_key() -> None:
    cuda = torch.device("cuda")
    on_gpu = render_settings(_run(cuda))  # type: ignore[arg-type]
    assert on_gpu[0]["batch_size"] == RenderConfig().batch_size_on("cuda") > RenderConfig().batch_size_on("cpu")
    assert on_gpu[-1] == {"device": "cuda"} and on_gpu[0]["precision"] == "fp32"
    assert render_settings(_run(torch.device("cuda", 1))) == on_gpu, "which GPU of one kind does not change icons"
    bf16 = render_settings(_run(cuda, precision="bf16"))
    assert bf16[0]["precision"] == "bf16" and bf16 != on_gpu
    assert render_settings(_run(CPU, batch_size=32))[0]["batch_size"] == 32  # a set batch size holds everywhere
    assert render_settings(_run(cuda, batch_size=32))[0]["batch_size"] == 32


def test_one_worker_per_gpu_each_seeing_its_own() -> None:
    assert gpu_worker_envs(4, None, None) == [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(4)]
    # torch numbers GPUs within an existing CUDA_VISIBLE_DEVICES: the workers get its entries
    assert gpu_worker_envs(2, None, "3, 5") == [{"CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "5"}]
    assert gpu_worker_envs(1, None, "GPU-8f2a,GPU-11bc") == [{"CUDA_VISIBLE_DEVICES": "GPU-8f2a"}]
    assert gpu_worker_envs(4, 2, None) == [{}], "cuda:N: one worker that sees every GPU and uses the one asked for"
    specs = gpu_worker_specs(gpu_worker_envs(3, None, None))
    assert [spec["options"]["env"]["CUDA_VISIBLE_DEVICES"] for spec in specs.values()] == ["0", "1", "2"]
    assert all(spec["options"]["nthreads"] == 1 for spec in specs.values()), "one task at a time per GPU"


def test_the_gpu_cluster_gives_each_worker_its_own_gpu_variable() -> None:
    """The cluster open_executor starts for device=cuda on a local machine, started here without a GPU: every worker
    process really has its own CUDA_VISIBLE_DEVICES (set before torch can initialise CUDA) and the thread count."""
    from distributed import Client

    cluster = start_gpu_cluster(gpu_worker_envs(2, None, None), threads=1)
    try:
        with Client(cluster) as client:
            seen = client.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("OMP_NUM_THREADS")))
    finally:
        cluster.close()
    assert sorted(seen.values()) == [("0", "1"), ("1", "1")], seen
