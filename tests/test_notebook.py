"""docs/notebook.ipynb executed in a real Jupyter kernel, as a newcomer runs it: a model class and a Dataset that exist
only in the notebook, atlas.run on the Dask client the notebook starts, the viewer inline, the cells as a table, one
channel rendered, a second call fully cached, and collection again after one weight changes.

The kernel runs this interpreter (a kernelspec written for ``sys.executable``, never whatever ``python3`` kernel a
machine has installed), so the notebook sees this environment's atlas."""

from __future__ import annotations

import ast
import base64
import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from PIL import Image

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebook.ipynb"
KERNEL = "atlas-test-interpreter"
BUNDLE = Path("outputs") / "fashion-notebook"  # where the notebook writes its atlas, under its working folder
GRID = 6
CELL_TIMEOUT_S = 600


def tagged(notebook: Any, tag: str) -> int:
    """The index of the one code cell tagged ``tag`` (the tags name the cells the checks read)."""
    (index,) = [k for k, cell in enumerate(notebook.cells) if tag in cell.metadata.get("tags", [])]
    return index


def result_of(cell: Any, mime: str) -> str:
    """The cell's value (its last expression) as ``mime``: progress bars are other outputs, widgets in a kernel."""
    (result,) = [output for output in cell.outputs if output["output_type"] == "execute_result"]
    text: str = result["data"][mime]
    return text


def stream_of(cell: Any, name: str = "stdout") -> str:
    return "".join(output["text"] for output in cell.outputs if output["output_type"] == "stream" and output["name"] == name)


def what_ran(cell: Any) -> dict[str, list[str]]:
    """The notebook's ``what_ran(bundle)``, read back from the cell's displayed value."""
    value: dict[str, list[str]] = ast.literal_eval(result_of(cell, "text/plain"))
    return value


def interpreter_kernel(folder: Path) -> KernelManager:
    """A kernel manager whose only kernelspec starts this interpreter."""
    write_kernel_spec(folder / KERNEL)
    specs = KernelSpecManager(kernel_dirs=[str(folder)], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


@pytest.mark.notebook
def test_the_example_notebook_runs_in_a_kernel_and_shows_what_it_says(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    kernel = interpreter_kernel(tmp_path / "kernels")
    work = tmp_path / "work"  # the notebook's folder: its outputs/ and, without Debian's copy, data/ go here
    work.mkdir()
    client = NotebookClient(notebook, km=kernel, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(work)}})
    kept_on_disk = -1
    started = time.monotonic()
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)  # raises CellExecutionError, with the traceback, on an error output
            if index == tagged(notebook, "table"):  # before a later call rewrites the bundle
                kept_on_disk = len(json.loads((work / BUNDLE / "levels" / str(GRID) / "cells.json").read_text()))
        probe = nbformat.v4.new_code_cell("import sys; print(sys.executable)")  # which Python the kernel ran
        notebook.cells.append(probe)
        client.execute_cell(probe, len(notebook.cells) - 1)
        notebook.cells.pop()
    seconds = time.monotonic() - started
    print(f"\n[notebook] {len(notebook.cells)} cells executed in {seconds:.0f} s")

    assert stream_of(probe).strip() == sys.executable, "the kernel runs this interpreter"
    errors = [
        (k, output) for k, cell in enumerate(notebook.cells) for output in cell.get("outputs", []) if output["output_type"] == "error"
    ]
    assert not errors, errors

    built = notebook.cells[tagged(notebook, "atlas")]
    page = result_of(built, "text/html")
    assert page.startswith("<iframe srcdoc="), page[:200]  # the bundle's _repr_html_: the viewer inline
    log = stream_of(built)
    assert "dask: the caller's client, scheduler tcp://127.0.0.1:" in log and "local cluster" not in log, log  # no second cluster
    assert (work / BUNDLE / "manifest.json").is_file()
    bars = [output for output in built.outputs if "application/vnd.jupyter.widget-view+json" in output.get("data", {})]
    assert bars and "TqdmWarning" not in stream_of(built, "stderr"), "progress bars are the notebook's widgets"

    table = notebook.cells[tagged(notebook, "table")]
    kept = re.search(r"^(\d+) cells kept", stream_of(table), re.MULTILINE)
    assert kept is not None, stream_of(table)
    assert int(kept.group(1)) == kept_on_disk > 0, "one DataFrame row per kept cell on disk"
    assert "<table" in result_of(table, "text/html")

    png = result_of(notebook.cells[tagged(notebook, "render_vis")], "image/png")
    rendered = Image.open(io.BytesIO(base64.b64decode(png)))
    assert rendered.size == (2 * (3 * 60 - 4), 2 * 56), "three 56 px renders side by side, shown twice as large"
    for k in range(3):
        low, high = rendered.crop((120 * k, 0, 120 * k + 112, 112)).getextrema()
        assert high - low > 64, f"render {k} is a picture, not a flat square"
    poster = result_of(notebook.cells[tagged(notebook, "poster")], "image/png")
    assert Image.open(io.BytesIO(base64.b64decode(poster))).size == (384, 384)

    second = what_ran(notebook.cells[tagged(notebook, "cached")])
    assert second["ran"] == [] and "collect" in second["cached"] and "tiles" in second["cached"], second
    changed_cell = notebook.cells[tagged(notebook, "changed")]
    changed = what_ran(changed_cell)
    assert changed["ran"][0] == "collect" and changed["cached"] == [], changed
    keys = re.search(r"(memory:SmallCNN@\w+) -> (memory:SmallCNN@\w+)", stream_of(changed_cell))
    assert keys is not None and keys.group(1) != keys.group(2), stream_of(changed_cell)


def test_the_notebook_is_committed_without_outputs() -> None:
    """Outputs would carry the embedded viewer (about a megabyte), this machine's paths and timings; the kernel run
    above is what shows they come out right."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    for tag in ("atlas", "table", "poster", "render_vis", "cached", "changed"):
        tagged(notebook, tag)
