"""Seed derivation: every random draw of a render is a pure function of one image's own seed.

Deriving seeds by hashing (never from a shared stream) is what makes image ``b``
render identically whether it is alone or in a batch of a hundred, and whether
its batch runs first or last on a Dask worker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

_SEED_MASK = (1 << 63) - 1


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``keys`` (stable across processes, unlike ``hash``)."""
    text = "/".join([str(int(seed)), *(str(k) for k in keys)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & _SEED_MASK


def try_seeds(seeds: Sequence[int], attempt: int) -> list[int]:
    """The seeds of best-of-N try ``attempt``; try 0 is the seeds themselves, so ``tries=1`` needs no lookup."""
    if attempt == 0:
        return [int(s) for s in seeds]
    return [derive_seed(s, "try", attempt) for s in seeds]


def generator(seed: int) -> torch.Generator:
    """A CPU generator for one image: draws happen on CPU so they match across devices."""
    return torch.Generator(device="cpu").manual_seed(int(seed) & _SEED_MASK)
