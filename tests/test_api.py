"""``atlas.run`` from Python: a model class and a dataset that exist only in the caller's process, the caller's own
Dask client, the cache across calls, and the same one-line errors as the command line."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

import atlas
from atlas.config import SchedulerConfig
from atlas.errors import AtlasError
from atlas.images.memory import MemorySource, as_dataset, dataset_spec, read_item
from atlas.images.source import Shard
from atlas.models.in_memory import module_spec
from atlas_pipelines.commands.cli import main
from atlas_pipelines.engine.executor import open_executor

SETTINGS = {
    "collect.positions_per_image": 4,
    "collect.shard_size": 4,
    "layout.fit_sample": 48,
    "layout.n_neighbors": 5,
    "grid.sizes": [2],
    "grid.min_count": 1,
    "render.steps": 4,
    "render.icon_size": 16,
    "tiles.examples_per_cell": 2,
}
PREPROCESSING = {"input_size": 16, "channels": 1, "mean": [0.5], "std": [0.5]}


def notebook_objects(marks: Path) -> tuple[nn.Module, Any]:
    """A model and a dataset defined here, inside a function, as a notebook cell defines them: no worker can import
    them, so they can only travel by value. Each unpickling leaves a file named by the process that did it."""

    def mark(kind: str) -> None:
        marks.mkdir(exist_ok=True)
        (marks / f"{kind}-{os.getpid()}-{os.urandom(4).hex()}").touch()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).mean((2, 3)))

        def __setstate__(self, state: dict[str, Any]) -> None:
            super().__setstate__(state)
            mark("model")

    class Shapes(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.classes = ["dark", "mid", "light"]
            generator = torch.Generator().manual_seed(0)
            self.pixels = (torch.rand(12, 1, 16, 16, generator=generator) * 255).to(torch.uint8)

        def __len__(self) -> int:
            return len(self.pixels)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            return self.pixels[index], index % 3

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)
            mark("dataset")

    torch.manual_seed(0)
    return Net(), Shapes()


def unpickled(marks: Path) -> Counter[tuple[str, int]]:
    """(kind, pid) -> how many times that process unpickled that object."""
    names = [path.name.split("-") for path in marks.glob("*")] if marks.exists() else []
    return Counter((kind, int(pid)) for kind, pid, _ in names)


def stages(bundle: atlas.Bundle) -> dict[str, bool]:
    return {name: entry["cached"] for name, entry in bundle.manifest["stages"].items()}


@pytest.mark.usefixtures("one_thread")
def test_objects_from_the_callers_process_run_on_the_callers_client_shipped_once_per_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from distributed import Client, LocalCluster

    net, dataset = notebook_objects(tmp_path / "marks")
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0") as cluster, Client(cluster) as client:
        workers = set(client.run(os.getpid).values())
        args = {"model": net, "layer": "features.2", "images": dataset, "preprocessing": PREPROCESSING, "out": tmp_path, "name": "nb"}

        classes = {"classes.classes": "all", "classes.min_rows": 3, "classes.n_neighbors": 3, "classes.grid": 2, "classes.min_count": 1}
        first = atlas.run(settings={**SETTINGS, **classes}, client=client, **args)
        log = capsys.readouterr().out
        assert f"scheduler {client.scheduler.address}" in log and "local cluster" not in log, log  # no second cluster
        assert client.status == "running", "the caller's client is left open"
        assert first.manifest["n_images"] == 12 and first.manifest["labels"] == ["dark", "mid", "light"]
        assert first.manifest["model"].startswith("memory:Net@") and not any(stages(first).values())
        assert first.manifest["levels"][0]["n_cells"] > 0 and (first.root / "tiles" / "2.png").is_file()
        built = [entry["folder"] for entry in json.loads((first.root / "classes" / "index.json").read_text())["classes"]]
        assert any(built) and all((first.root / folder / "manifest.json").is_file() for folder in built if folder)
        counts = unpickled(tmp_path / "marks")
        # Each worker unpickled the model and the dataset exactly once, though it ran many tasks (3 collect shards,
        # the examples, the render batches and the tiles); this process used the objects themselves.
        assert {pid for _, pid in counts} == workers, counts
        assert all(count == 1 for count in counts.values()), counts

        second = atlas.run(settings={**SETTINGS, **classes}, client=client, **args)
        assert all(stages(second).values()), stages(second)  # the same objects: every stage cached
        assert unpickled(tmp_path / "marks") == counts, "a fully cached call ships nothing"
        capsys.readouterr()

        with torch.no_grad():
            net.features[0].weight[0, 0, 0, 0] += 0.5  # one weight changes: a new model key, collection again
        third = atlas.run(settings={**SETTINGS, "scheduler.address": "current"}, **args)  # the notebook's current client
        assert f"scheduler {client.scheduler.address}" in capsys.readouterr().out
        assert third.manifest["model"] != first.manifest["model"]
        assert not stages(third)["collect"], stages(third)
        assert set(unpickled(tmp_path / "marks").values()) == {2}, "shipped once per worker again, for the new model"
        assert len(client.scheduler_info()["workers"]) == 2

        net.lock = threading.Lock()  # an attribute pickle cannot send: one line naming the object and the fix
        with pytest.raises(AtlasError, match=r"^memory:Net@\w+.*: cannot be sent to the Dask workers \(TypeError: .*lock"):
            atlas.run(settings=SETTINGS, client=client, **{**args, "name": "unpicklable"})


def test_in_process_uses_the_objects_themselves_and_names_classes(tmp_path: Path) -> None:
    net, dataset = notebook_objects(tmp_path / "marks")
    args: dict[str, Any] = {
        "settings": {**SETTINGS, "scheduler.address": "sync"}, "model": net, "layer": "features.2", "images": dataset,
        "preprocessing": PREPROCESSING, "classes": ["x", "y", "z"], "out": tmp_path, "name": "sync", "until": "collect",
        "log": lambda line: None,
    }  # fmt: skip
    bundle = atlas.run(**args)
    assert bundle.manifest["labels"] == ["x", "y", "z"] and bundle.manifest["n_activations"] == 48
    assert not unpickled(tmp_path / "marks"), "nothing pickled under --scheduler sync"
    rows = bundle.rows()
    assert sorted(set(rows.label.tolist())) == [0, 1, 2], "the dataset's labels reach the store"
    assert not net.training, "the model object itself ran (left in eval mode)"

    with torch.no_grad():
        net.features[0].weight.mul_(-1.0)  # the first object changes after its run ...
    changed = atlas.run(**{**args, "name": "changed"})
    again, _ = notebook_objects(tmp_path / "marks")  # ... and an object equal to its first state comes: that one runs
    rerun = atlas.run(**{**args, "model": again, "name": "again"})
    assert rerun.manifest["model"] == bundle.manifest["model"] != changed.manifest["model"]
    assert not again.training, "the equal object passed now is the one used, not the earlier one that changed"
    assert torch.equal(torch.as_tensor(rerun.rows().activation), torch.as_tensor(rows.activation))


def test_a_list_of_paths_and_images_skips_an_unreadable_file(tmp_path: Path) -> None:
    paths = []
    for k in range(6):
        path = tmp_path / f"{k}.png"
        Image.new("L", (20, 20), color=40 * k).save(path)
        paths.append(path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    images = [*paths, tmp_path / "broken.png", Image.new("L", (20, 20), color=255)]
    source = MemorySource(dataset_spec(as_dataset(images[:6])), as_dataset(images))
    records = list(source.read(Shard(0, 0, len(images), 0)))
    assert [r.image is None for r in records] == [False] * 6 + [True, False]
    assert "broken.png" in (records[6].error or "")
    assert records[7].image is not None and records[7].image.getpixel((0, 0)) == 255

    net, _ = notebook_objects(tmp_path / "marks")
    bundle = atlas.run(
        settings={**SETTINGS, "scheduler.address": "sync"}, model=net, layer="features.2", images=images,
        preprocessing=PREPROCESSING, out=tmp_path, name="list", until="collect", log=lambda line: None,
    )  # fmt: skip
    assert bundle.manifest["n_images"] == 7 and bundle.manifest["skipped"]["count"] == 1
    assert bundle.manifest["skipped"]["files"][0]["name"] == "6"


def test_item_forms_are_read_one_way_or_refused() -> None:
    grey = torch.full((1, 4, 4), 0.5)
    image, label = read_item((grey, torch.tensor(2)))
    assert image.mode == "L" and image.getpixel((0, 0)) == 128 and label == 2
    image, label = read_item(torch.zeros(3, 4, 4, dtype=torch.uint8))
    assert image.mode == "RGB" and label is None
    with pytest.raises(ValueError, match="0-1 before normalisation"):
        read_item((grey - 1.0, 0))  # a normalised tensor could be read two ways: refused
    with pytest.raises(ValueError, match="channels first"):
        read_item(torch.zeros(4, 4, 3, dtype=torch.uint8))
    with pytest.raises(AtlasError, match="item 0 of the dataset cannot be read"):
        dataset_spec([(grey - 1.0, 0)])


def test_keys_follow_the_content_and_the_callers_key(tmp_path: Path) -> None:
    net, dataset = notebook_objects(tmp_path / "marks")
    spec = module_spec(net)
    assert module_spec(net) == spec
    with torch.no_grad():
        net.head.bias[0] += 1.0
    assert module_spec(net) != spec
    key = dataset_spec(dataset)
    assert dataset_spec(dataset) == key and dataset_spec(dataset, "v2") != key
    dataset.pixels[0, 0, 0, 0] += 1  # the first item is always in the sample
    assert dataset_spec(dataset) != key


def test_errors_are_the_command_lines_line_and_no_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for key, text in (("collect.n_images", "many"), ("collect.no_such_key", "1")):
        assert main(["run", "--out", str(tmp_path), "--set", f"{key}={text}"]) == 2
        line = capsys.readouterr().err.strip().removeprefix("atlas: error: ")
        with pytest.raises(AtlasError) as raised:
            atlas.run(settings={key: text}, out=tmp_path)
        assert str(raised.value) == line and "\n" not in line and key in line, line
        with pytest.raises(AtlasError) as raised:
            atlas.run(settings=[f"{key}={text}"], out=tmp_path)
        assert str(raised.value) == line
    net, _ = notebook_objects(tmp_path / "marks")
    with pytest.raises(AtlasError, match=r"^preprocessing: atlas cannot read input_size, mean, std from a Net; pass preprocessing="):
        atlas.run(model=net, layer="features.2", out=tmp_path)
    timm = pytest.importorskip("timm")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(AtlasError, match="^output.dir"):  # past the preprocessing check: timm says how it takes images
        atlas.run(model=timm.create_model("resnet18", pretrained=False, num_classes=3), layer="layer2", out=a_file)
    with pytest.raises(AtlasError, match="^preprocessing: atlas cannot read"):  # the same call with a module timm did not build
        atlas.run(model=net, layer="features.2", out=a_file)
    with pytest.raises(AtlasError, match="^preprocessing: unknown key 'size'"):
        atlas.run(model=net, preprocessing={"size": 16}, out=tmp_path)
    current = open_executor(SchedulerConfig(address="current"))
    with pytest.raises(AtlasError, match="^scheduler.address 'current': this process has no Dask client"), current:
        pass


def test_a_dict_config_reads_like_its_yaml(tmp_path: Path) -> None:
    tree = {"model": {"spec": "timm:resnet18", "pretrained": False}, "grid": {"sizes": [3, 6]}, "output": {"name": "d"}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(AtlasError) as from_dict:
        atlas.run(tree, settings={"grid.sizes": "x"}, out=tmp_path)
    with pytest.raises(AtlasError) as from_file:
        atlas.run(tmp_path / "d.yaml", settings={"grid.sizes": "x"}, out=tmp_path)
    assert str(from_dict.value) == str(from_file.value) and "grid.sizes" in str(from_dict.value)


def test_compare_in_process_takes_module_objects_and_reads_back(tmp_path: Path) -> None:
    """``atlas.compare_models`` with a notebook's CNN beside a ViT object (a 4 x 4 patch grid against the CNN's 16 x 16 map),
    on a dataset object; the comparison reads back through ``atlas.open_comparison``."""
    from atlas.compare.similarity import cka_matrix
    from atlas.models.zoo import TinyViT

    net, dataset = notebook_objects(tmp_path / "marks")
    torch.manual_seed(1)
    vit = TinyViT(activation="gelu", num_classes=3, width=4, depth=2, input_size=16).eval()
    comparison = atlas.compare_models(
        {"cnn": {"spec": net, "layer": "features.2", **PREPROCESSING}, "vit": {"spec": vit, "layer": "blocks.1", **PREPROCESSING}},
        settings={**SETTINGS, "scheduler.address": "sync"}, images=dataset, out=tmp_path, log=lambda line: None,
    )  # fmt: skip
    assert comparison.root == tmp_path / "compare" and comparison.names == ["cnn", "vit"]
    cnn, vit_rows = comparison.bundle("cnn").rows(), comparison.bundle("vit").rows()
    assert len(cnn) == len(vit_rows) == 48 and (vit_rows.y == cnn.y // 4).all() and (vit_rows.x == cnn.x // 4).all()
    names, matrix = comparison.cka()
    assert names == ["cnn", "vit"] and np.allclose(matrix, cka_matrix([cnn.activation, vit_rows.activation]), atol=1e-4)
    assert set(comparison.probes()) == {"cnn", "vit"}
    with pytest.raises(AtlasError, match="input_size"):
        atlas.compare_models({"a": {"spec": net, "layer": "features.2"}, "b": "x:y"}, out=tmp_path, log=lambda line: None)
