"""Process-level tuning that PyTorch on CPU needs: glibc malloc thresholds and arenas.

glibc returns freed memory to the OS eagerly and serves large tensors with
fresh mmaps, so every step of a CPU forward/backward pays page faults: 1.5-3x
slower and noisy (docs/architecture.md, section 7), far worse in long render loops. Raising
the thresholds with mallopt works in a running process, unlike the
MALLOC_*_ environment variables, which glibc reads only at start-up.

Dask runs tasks on worker threads, and glibc gives each new thread its own
arena, whose heaps are trimmed and refilled separately: the same collect task
ran 15-40% slower on a worker thread than on the main thread. One arena
(M_ARENA_MAX=1) removes most of that; it must be set before the first extra
thread allocates, hence both the mallopt at start-up and the variable for
child processes.

The raised trim threshold keeps a long-lived worker at the high-water mark of every stage it ran (up to 1 GiB of
freed heap kept for reuse). Between stages nothing needs that heap, so the stage loop hands it back
(release_free_memory, glibc's malloc_trim) in the driver and on every worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache, lru_cache
from typing import Any

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20  # with one arena, 1 GiB was no faster in the collect benchmark (0.93 vs 0.97 of bare)
TRIM_THRESHOLD = 1 << 30
ARENA_MAX = 1

# For child processes, which read them at start-up.
MALLOC_ENVIRON = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    "MALLOC_ARENA_MAX": str(ARENA_MAX),
}


@cache
def _glibc(function: str) -> Any:
    """glibc's ``function`` (found once per process: find_library runs a subprocess), or None on another C library."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), function)
    except (OSError, AttributeError):
        return None


@lru_cache(maxsize=1)
def tune_allocator() -> bool:
    """Raise glibc's trim and mmap thresholds and keep one arena in this process; False where the C library is not glibc."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_ARENA_MAX, ARENA_MAX))
    return all([bool(mallopt(option, value)) for option, value in settings])  # noqa: C419 -- every option must be set, no short-circuit


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS (glibc's malloc_trim(0)); False where the C library is not glibc."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))
