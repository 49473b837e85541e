"""Where a run writes (``output``) and where its work runs (``scheduler``)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from atlas.config.section import Section


class OutputConfig(Section):
    dir: str = Field(
        default="outputs", description="a folder, or an fsspec URL every worker can reach (s3://bucket/prefix, gs://, abfs://)"
    )
    name: str | None = Field(default=None, description="the bundle's folder name under output.dir")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value in ("", ".", "..") or any(c in value for c in "/\\\0\n\r"):
            raise ValueError("give one folder name: not empty, '.' or '..', without slashes or line breaks")
        if len(os.fsencode(value)) > 255:
            raise ValueError("give a folder name of at most 255 bytes")
        return value

    @field_validator("dir")
    @classmethod
    def _dir_text(cls, value: str) -> str:
        if not value.strip() or any(c in value for c in "\0\n\r"):
            raise ValueError("give a folder or an fsspec URL: not empty, without NUL or line breaks")
        return value

    @field_validator("dir", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        """A str, not a Path: Path("s3://b/x") would fold the URL's // into one slash."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value


SCHEDULER_ADDRESS = re.compile(r"(tcp|tls|ucx)://[^\s/]+")


class SchedulerConfig(Section):
    address: str = Field(
        default="local", description="'local' (a LocalCluster), 'tcp://HOST:PORT', 'sync', or 'current' (this process's Dask client)"
    )
    workers: int | None = Field(
        default=None, ge=1, le=1024, description="local cluster worker processes, 1 to 1,024 (default cores / threads)"
    )
    threads_per_worker: int | None = Field(default=None, ge=1, le=1024, description="PyTorch threads per worker, 1 to 1,024 (default 1)")
    upload: tuple[Path, ...] = Field(
        default=(),
        max_length=1000,
        description="Python files (.py, .zip, .egg) Dask copies to every worker: a model module the workers lack",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value not in ("local", "sync", "current") and not SCHEDULER_ADDRESS.fullmatch(value):
            raise ValueError("expected 'local', 'sync', 'current' (this process's Dask client) or an address like tcp://HOST:8786")
        return value
