"""Preloaded into every worker of the local cluster: Ctrl-C is the driver's to handle.

A terminal sends SIGINT to its whole foreground process group, the local cluster's worker
processes included. The driver turns it into exit 130 with the resume hint and closes the
cluster, which stops the workers; a worker that took the signal itself would die printing
tracebacks over that message first. User errors are quieted from the start too, not only from a worker's
first task on.
"""

from __future__ import annotations

import signal
from typing import Any

from atlas_pipelines.engine.worker_state import quiet_user_errors


def dask_setup(worker: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_user_errors()
