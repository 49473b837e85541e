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
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

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


@lru_cache(maxsize=1)
def tune_allocator() -> bool:
    """Raise glibc's trim and mmap thresholds and keep one arena in this process; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_ARENA_MAX, ARENA_MAX))
    return all([bool(mallopt(option, value)) for option, value in settings])  # noqa: C419 -- every option must be set, no short-circuit
