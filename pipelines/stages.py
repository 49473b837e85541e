"""Stage bookkeeping: a stage is skipped when its marker holds the same input key.

A stage writes its outputs atomically, then its marker; a run killed in between
simply redoes that stage. Keys chain: each stage's key includes the key of the
stage it reads, so changing the model re-runs everything after collection.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from atlas.io import read_json, write_json


def fingerprint(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_fingerprint(path: Path) -> str:
    """Content hash of a file, streamed so a large index never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@dataclass
class StageLog:
    run_dir: Path
    log: Callable[[str], None] = print
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _marker(self, name: str) -> Path:
        return self.run_dir / ".stages" / f"{name}.json"

    def is_fresh(self, name: str, key: str) -> bool:
        marker = self._marker(name)
        return marker.exists() and read_json(marker).get("key") == key

    def run(self, name: str, key: str, work: Callable[[], None]) -> bool:
        """Run ``work`` unless the stage is fresh; returns whether it was cached."""
        started = time.perf_counter()
        cached = self.is_fresh(name, key)
        if cached:
            self.log(f"[{name}] cached")
        else:
            self.log(f"[{name}] running")
            work()
            write_json(self._marker(name), {"key": key})
        seconds = round(time.perf_counter() - started, 3)
        self.records[name] = {"seconds": seconds, "cached": cached}
        if not cached:
            self.log(f"[{name}] done in {seconds:.1f} s")
        return cached
