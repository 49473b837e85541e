"""Where tasks run: a local Dask cluster (default), an existing one, the caller's own client, or in-process.

Stage code sees only ``submit``, ``scatter`` and ``as_completed``; choosing the
scheduler is this module's job alone. With the model on a GPU, the local cluster
is one worker per GPU instead of one per core (``gpu_worker_envs``). A client the
caller made (``atlas.run(client=...)``, or ``scheduler.address: current``) is used
as it is: no cluster is started, and it is never closed here.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from atlas.config import SchedulerConfig
from atlas.errors import AtlasError
from atlas.runtime import MALLOC_ENVIRON, release_free_memory

if TYPE_CHECKING:
    import torch


class Executor(Protocol):
    threads_per_task: int

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` as a task; an argument that is another task's future is its result, computed where it runs."""
        ...

    def scatter(self, value: Any) -> Any: ...

    def as_completed(self, futures: Iterable[Any]) -> Iterator[Any]: ...

    def warm(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` once on every worker now, without waiting: later tasks find what it loaded."""
        ...


class _Deferred:
    """A task that runs when its result is first asked for, so progress bars advance in-process too."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._fn, self._args = fn, args
        self._future: Future | None = None

    def result(self) -> Any:
        if self._future is None:
            self._future = Future()
            try:
                # A task's argument may be another task, as with Dask futures: it runs first.
                args = [arg.result() if isinstance(arg, _Deferred) else arg for arg in self._args]
                self._future.set_result(self._fn(*args))
            except BaseException as err:  # re-raised below, like a Dask future
                self._future.set_exception(err)
        return self._future.result()


class InProcessExecutor:
    """Runs each task in this process, one after another; for debugging and for tests that need no cluster."""

    def __init__(self, threads: int) -> None:
        self.threads_per_task = threads

    def submit(self, fn: Callable[..., Any], *args: Any) -> _Deferred:
        return _Deferred(fn, args)

    def scatter(self, value: Any) -> Any:
        return value

    def as_completed(self, futures: Iterable[_Deferred]) -> Iterator[_Deferred]:
        for future in futures:
            future.result()
            yield future

    def warm(self, fn: Callable[..., Any], *args: Any) -> None:
        """Nothing to warm: the first task loads what it needs, in this process."""


class DaskExecutor:
    def __init__(self, client: Any, threads_per_task: int) -> None:
        self.client = client
        self.threads_per_task = threads_per_task
        self._warming: list[Any] = []  # held so Dask does not drop the tasks before they run
        self._submitted: weakref.WeakSet[Any] = weakref.WeakSet()  # to cancel: weak, so results are freed as usual
        self._keys: set[Any] = set()  # to wait for: a task still runs after its future is dropped or cancelled

    def warm(self, fn: Callable[..., Any], *args: Any) -> None:
        """One task pinned to each worker, queued ahead of the stage's tasks (a worker runs one task at a time)."""
        for address in self.client.scheduler_info().get("workers", {}):
            self._warming.append(self.client.submit(fn, *args, workers=[address], allow_other_workers=False, pure=False))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self.client.submit(fn, *args, pure=False)
        self._submitted.add(future)
        self._keys.add(future.key)
        return future

    def scatter(self, value: Any) -> Any:
        """hash=False: equal values scattered twice (render's probe and its batches both send the whitening) get keys
        of their own; with content-hashed keys, the first reference to go out of scope would delete the data under
        the second ("lost dependencies")."""
        return self.client.scatter(value, broadcast=True, hash=False)

    def as_completed(self, futures: Iterable[Any]) -> Iterator[Any]:
        """Futures as they finish. Before a failed one is handed over (its ``result()`` raises and ends the stage),
        and whenever the caller stops early (an error in its loop, Ctrl-C), every task of this executor is stopped (:meth:`settle`)."""
        from distributed import as_completed

        finished = False
        try:
            for future in as_completed(list(futures)):
                if future.status == "error":
                    self.settle()
                yield future
            finished = True
        finally:
            if not finished:  # not on a normal end: tasks submitted meanwhile (tiles' pyramids) are still wanted
                self.settle()

    def settle(self) -> None:
        """Cancel this executor's unfinished tasks and wait (at most SETTLE_S) until no worker runs one any more.

        Dask's cancel only forgets a task that has started; its thread runs on to the end and may still write into
        the bundle. A stage that raises must leave none running before the bundle's lock is released: closing a
        client stops nothing on a cluster atlas did not start, and on atlas's own a task could use the space the
        lock's record frees."""
        self.client.cancel([future for future in list(self._submitted) if not future.done()])
        deadline = time.monotonic() + SETTLE_S
        while self._keys and time.monotonic() < deadline:
            try:
                running = self.client.run(_running_keys)
            except OSError:  # the cluster closing or a worker gone: nothing runs there any more
                return
            still = self._keys.intersection(key for keys in running.values() for key in keys)
            self._keys = still  # finished tasks never run again: only these are waited for next time
            if not still:
                return
            time.sleep(SETTLE_POLL_S)


SETTLE_S = 600.0  # the longest a failed stage waits for its running tasks (a batch of large icons on a CPU)
SETTLE_POLL_S = 0.05


def _running_keys(dask_worker: Any) -> list[Any]:
    """On a worker: the keys of the tasks occupying its threads, cancelled ones included."""
    return [task.key for task in dask_worker.state.all_running_tasks]


WORKER_PRELOAD = "atlas_pipelines.engine.worker_signals"  # local workers leave Ctrl-C to the driver


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def gpu_worker_envs(count: int, index: int | None, visible: str | None) -> list[dict[str, str]]:
    """One local worker per GPU: the environment each worker adds, as a pure function of what torch sees.

    ``index`` None (``device: cuda`` or ``auto``): a worker per visible GPU, each seeing only its own GPU (as
    ``cuda:0``), so ``cuda`` on every worker means that worker's GPU. ``visible``: the ``CUDA_VISIBLE_DEVICES``
    this process already has; torch's numbering is within it, so the workers get its entries, not torch indices.
    ``index`` N (``device: cuda:N``): one worker, left seeing every GPU, which uses ``cuda:N`` as asked.
    """
    if index is not None:
        return [{}]
    ids = [part.strip() for part in visible.split(",") if part.strip()] if visible else [str(i) for i in range(count)]
    return [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in ids[:count]]


def gpu_worker_specs(envs: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
    """SpecCluster worker specs: a Nanny per GPU, one task at a time, with that GPU's environment."""
    from distributed import Nanny

    return {f"gpu-{n}": {"cls": Nanny, "options": {"nthreads": 1, "env": env}} for n, env in enumerate(envs)}


def start_gpu_cluster(envs: list[dict[str, str]], threads: int) -> Any:
    """dask-cuda's LocalCUDACluster when it is installed (one worker per GPU, its own GPU first), else a SpecCluster
    of the same shape. ``threads``: torch/OpenMP threads per worker (the CPU parts: decoding, UMAP, tiles)."""
    import dask
    from distributed import Scheduler, SpecCluster

    environ = {**MALLOC_ENVIRON, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ, "distributed.worker.preload": [WORKER_PRELOAD]}):
        if importlib.util.find_spec("dask_cuda") is not None and all("CUDA_VISIBLE_DEVICES" in env for env in envs):
            from dask_cuda import LocalCUDACluster

            return LocalCUDACluster(
                CUDA_VISIBLE_DEVICES=[env["CUDA_VISIBLE_DEVICES"] for env in envs], threads_per_worker=1,
                dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
            )  # fmt: skip
        scheduler = {"cls": Scheduler, "options": {"dashboard_address": "127.0.0.1:0"}}
        return SpecCluster(workers=gpu_worker_specs(envs), scheduler=scheduler, silence_logs=logging.ERROR)


@contextmanager
def open_executor(
    config: SchedulerConfig,
    log: Callable[[str], None] = print,
    device: torch.device | None = None,
    client: Any = None,
    objects: Mapping[str, Any] | None = None,
) -> Iterator[Executor]:
    """``device``: the run's resolved device; a CUDA one makes the local cluster one worker per GPU. ``client``: the
    caller's ``distributed.Client``, used instead of ``config.address``. ``objects``: the run's in-memory objects by
    spec, shipped to every Dask worker once (in-process, the caller's process has them already)."""
    address = config.address
    if client is None and address == "sync":
        yield InProcessExecutor(cores())
        return
    import dask
    from distributed import Client, LocalCluster

    from atlas_pipelines.engine.shipping import shipped

    if client is None and address == "current":
        client = _current_client()
    if client is not None:
        upload(client, config.upload)
        log(f"dask: the caller's client, scheduler {client.scheduler.address}; {_dashboard(client)}")
        with shipped(client, objects or {}):
            yield DaskExecutor(client, _threads(client))  # the caller's: never closed here
        return

    if address == "local":
        if device is not None and device.type == "cuda":
            import torch

            envs = gpu_worker_envs(torch.cuda.device_count(), device.index, os.environ.get("CUDA_VISIBLE_DEVICES"))
            workers, threads = len(envs), config.threads_per_worker or max(1, cores() // len(envs))
            cluster = start_gpu_cluster(envs, threads)  # one worker per GPU, each with cores / GPUs threads
        else:
            threads = config.threads_per_worker or 1
            workers = config.workers or max(1, cores() // threads)
            # One task at a time per worker process, each using `threads` PyTorch threads, workers x threads
            # = cores. One single-threaded worker per core held up far better than one worker with every
            # core when anything else shares the machine (OpenMP threads spin when a core is taken).
            # Dask's nanny would set MALLOC_TRIM_THRESHOLD_=65536, which slows PyTorch on CPU 1.5-3x.
            environ = {
                **MALLOC_ENVIRON,
                "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads,
                "OPENBLAS_NUM_THREADS": threads,
            }
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ, "distributed.worker.preload": [WORKER_PRELOAD]}):
                cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR
                )
        client = Client(cluster)
        try:
            upload(client, config.upload)
            log(f"dask: local cluster, {workers} worker(s) x {threads} thread(s); {_dashboard(client)}")
            with shipped(client, objects or {}):
                yield DaskExecutor(client, threads)
        finally:
            client.close()
            cluster.close()
        return
    if not address.startswith(("tcp://", "tls://", "ucx://")):
        raise AtlasError(f"scheduler {address!r}: expected 'local', 'sync', 'current' or an address like tcp://HOST:8786")
    try:
        client = Client(address, timeout="10s")
    except OSError as err:
        raise AtlasError(f"scheduler {address!r}: cannot connect ({err}); is `dask scheduler` running there?") from None
    try:
        upload(client, config.upload)
        log(f"dask: connected to {address}; {_dashboard(client)}")
        with shipped(client, objects or {}):
            yield DaskExecutor(client, _threads(client))
    finally:
        client.close()


def _threads(client: Any) -> int:
    """PyTorch threads per task on a cluster atlas did not start: its workers' thread count."""
    info = client.scheduler_info()
    return max((w.get("nthreads", 1) for w in info.get("workers", {}).values()), default=1)


def _current_client() -> Any:
    """``scheduler.address: current``: the client this process made last (a notebook's), or one line."""
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        raise AtlasError(
            "scheduler.address 'current': this process has no Dask client; make one (distributed.Client()) first, or use 'local'"
        ) from None


def upload(client: Any, files: Sequence[Path]) -> None:
    """Copy ``scheduler.upload`` files to every worker, and to workers that join later (Dask's upload_file plugin)."""
    for path in files:
        if not path.is_file():
            raise AtlasError(f"scheduler.upload: {path} is not a file; list .py, .zip or .egg files the workers should import")
        client.upload_file(str(path), load=True)


def _dashboard(client: Any) -> str:
    """Where the dashboard is, or how to get it: its page needs bokeh, an optional extra."""
    if importlib.util.find_spec("bokeh") is None:
        return "dashboard: pip install 'activation-atlas[dashboard]'"
    return f"dashboard {client.dashboard_link}"


class LazyExecutor:
    """Starts the cluster (or ships the run's objects to the caller's) the first time a stage needs it, so a fully
    cached re-run starts none and sends nothing."""

    def __init__(
        self,
        config: SchedulerConfig,
        stack: ExitStack,
        log: Callable[[str], None],
        device: torch.device | None = None,
        client: Any = None,
        objects: Mapping[str, Any] | None = None,
    ) -> None:
        self._config, self._stack, self._log, self._device = config, stack, log, device
        self._client, self._objects = client, objects
        self._executor: Executor | None = None

    def release_memory(self) -> None:
        """Between stages: every worker (if the cluster was started) and this process return their free heap."""
        release_free_memory()
        if isinstance(self._executor, DaskExecutor):
            self._executor.client.run(release_free_memory)

    def __call__(self) -> Executor:
        if self._executor is None:
            opened = open_executor(self._config, self._log, self._device, self._client, self._objects)
            self._executor = self._stack.enter_context(opened)
        return self._executor
