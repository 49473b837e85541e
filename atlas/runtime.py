"""Process-level tuning that PyTorch on CPU needs: glibc malloc thresholds.

glibc returns freed memory to the OS eagerly and serves large tensors with
fresh mmaps, so every step of a CPU forward/backward pays page faults: 1.5-3x
slower and noisy (design.md section 5), far worse in long render loops. Raising
the thresholds with mallopt works in a running process, unlike the
MALLOC_*_ environment variables, which glibc reads only at start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the benchmark found 1 GiB faster still, but only together with MALLOC_ARENA_MAX=1
TRIM_THRESHOLD = 1 << 30

# For child processes, which read them at start-up.
MALLOC_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


@lru_cache(maxsize=1)
def tune_allocator() -> bool:
    """Raise glibc's trim and mmap thresholds in this process; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
