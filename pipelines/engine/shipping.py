"""Objects a Python caller handed to the run (a model, a dataset), sent by value to every Dask worker once.

A worker plugin carries them: Dask pickles it once (cloudpickle, so a class defined in a notebook travels by value)
and every worker, including one that joins later, unpickles it once and registers its objects under their specs
(:mod:`atlas.in_memory`). Tasks then carry only the spec strings and find the objects there, as the model cache
finds a spec-loaded model. The plugin is removed when the run ends: a user's long-lived cluster keeps no copy beyond
the model cache's usual two.
"""

from __future__ import annotations

import copyreg
import hashlib
import importlib
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from atlas.errors import AtlasError
from atlas.in_memory import forget, register


class ShippedObjects(WorkerPlugin):
    """Registers the run's in-memory objects in a worker, and forgets them when the plugin is removed."""

    def __init__(self, objects: Mapping[str, Any]) -> None:
        self.objects = dict(objects)

    def setup(self, worker: Any) -> None:
        for spec, value in self.objects.items():
            register(spec, value)

    def teardown(self, worker: Any) -> None:
        for spec in self.objects:
            forget(spec)


TORCH_NAMESPACES = ("torch.classes", "torch.ops")  # module-like objects in sys.modules that pickle cannot reduce


def pickle_torch_namespaces_by_name() -> None:
    """cloudpickle sends, with a function it pickles by value, every submodule of a global it reads whose name is also
    an attribute the code reads: ``torch`` plus ``self.classes`` (a Dataset's class names) sends ``torch.classes``,
    which is no plain module and cannot be pickled. Reduce those to an import by name, as plain modules are."""
    for name in TORCH_NAMESPACES:
        namespace = sys.modules.get(name)
        if namespace is not None:
            copyreg.pickle(type(namespace), lambda _obj, name=name: (importlib.import_module, (name,)))


@contextmanager
def shipped(client: Any, objects: Mapping[str, Any]) -> Iterator[None]:
    """``objects`` (spec -> object) on every worker of ``client`` while the block runs."""
    if not objects:
        yield
        return
    pickle_torch_namespaces_by_name()
    name = "atlas-objects-" + hashlib.sha256("|".join(sorted(objects)).encode()).hexdigest()[:16]
    try:
        client.register_plugin(ShippedObjects(objects), name=name)
    except Exception as err:  # pickling here or unpickling on a worker: the object, not atlas, is what to change
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise AtlasError(
            f"{', '.join(sorted(objects))}: cannot be sent to the Dask workers ({reason}); make the object picklable "
            "(no open files, locks or generators in its attributes), or run in this process with scheduler='sync'"
        ) from None
    try:
        yield
    finally:
        if client.status == "running":
            with suppress(ValueError, OSError):  # a worker gone or a closed comm: the run's own error is the one to see
                client.unregister_worker_plugin(name)
