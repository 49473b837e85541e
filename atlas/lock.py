"""One writer per bundle: `atlas run` and `atlas classes` hold the bundle's lock while they work.

A bundle on this machine's disk (or a shared file system) is locked with an OS lock: ``flock`` on
``<bundle>/.lock``, through ``filelock``. The kernel drops it when its process ends, however it ends
(SIGKILL included), so a killed run never leaves a lock that blocks anybody. The holder records who it
is in ``<bundle>/.lock.json`` (pid, host, start time, command): a second run reads it for its one-line
refusal, and a run that gets the lock and still finds a record there knows the previous holder died
without releasing it (its pid is checked on this host) and logs that it takes over.

A bundle on an object store (``s3://``, ``gs://``, ...) has no locks. There ``.lock.json`` is a lease:
its holder rewrites the ``heartbeat`` timestamp every ``HEARTBEAT_S`` seconds from a thread, and a lease
not renewed for ``LEASE_TIMEOUT_S`` seconds is stale and taken over. A new holder writes its lease,
waits ``SETTLE_S`` and reads it back, so of two runs starting together the later writer wins. That is
best effort: stores without conditional writes cannot make it exact, and it trusts the hosts' clocks.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

from filelock import FileLock, Timeout

from atlas.errors import AtlasError
from atlas.io import remove_tree, write_json
from atlas.storage import Location

LOCK_FILE = ".lock"  # local bundles: the file flock holds (it stays; it is empty)
OWNER_FILE = ".lock.json"  # who holds the lock; the lease itself on an object store
HEARTBEAT_S = 30.0
LEASE_TIMEOUT_S = 300.0
SETTLE_S = 1.0
HOLDER_WAIT_S = 1.0  # a refused run waits this long at most for the holder to write its record


class BundleLocked(AtlasError):
    """Another process is writing this bundle."""


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    started: str
    command: str
    token: str
    heartbeat: float | None = None  # leases only: seconds since the epoch, on the holder's clock

    @classmethod
    def this_process(cls, heartbeat: float | None = None) -> Owner:
        argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=datetime.now().astimezone().isoformat(timespec="seconds"),
            command=shlex.join(argv),
            token=uuid.uuid4().hex,
            heartbeat=heartbeat,
        )

    def describe(self) -> str:
        command = self.command.replace("\n", "\\n")
        command = command if len(command) <= 300 else command[:297] + "..."
        return f"pid {self.pid} on {self.host}, started {self.started}, command: {command}"

    def running_here(self) -> bool | None:
        """Whether its process still runs; None when it ran on another host (a pid there means nothing here)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process with that pid
            return True
        return True

    def stale(self, now: float) -> bool:
        return self.heartbeat is None or now - self.heartbeat > LEASE_TIMEOUT_S


def read_owner(root: Location) -> Owner | None:
    """The record of whoever holds (or last held, when killed) the bundle's lock; None when there is none."""
    try:
        value = json.loads((root / OWNER_FILE).read_text())
        return Owner(**value)
    except (OSError, ValueError, TypeError):  # missing, torn or from another version: no usable record
        return None


@contextmanager
def bundle_lock(root: Location, log: Callable[[str], None] = print) -> Iterator[Owner]:
    """Hold the lock of the bundle at ``root`` (a folder that exists) for the block; refuse with one line if it is taken."""
    with _local_lock(root, log) if isinstance(root, Path) else _lease(root, log) as owner:
        yield owner


def _refusal(root: Location, holder: Owner | None, detail: str = "") -> BundleLocked:
    who = holder.describe() if holder is not None else "a process that has not said who it is yet"
    return BundleLocked(
        f"{root}: another atlas process is writing this bundle ({who}{detail}); "
        "wait for it to finish or stop it, then run again (a killed run's lock is taken over)"
    )


@contextmanager
def _local_lock(root: Path, log: Callable[[str], None]) -> Iterator[Owner]:
    lock = FileLock(str(root / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _refusal(root, _holder(root)) from None
    try:
        previous = read_owner(root)
        if previous is not None:
            state = "no longer running" if previous.running_here() is False else "it no longer holds the lock"
            log(f"[lock] {root}: taking over from a run that stopped without releasing it ({previous.describe()}; {state})")
        owner = Owner.this_process()
        write_json(root / OWNER_FILE, asdict(owner))
        yield owner
    finally:
        (root / OWNER_FILE).unlink(missing_ok=True)
        lock.release()


def _holder(root: Path) -> Owner | None:
    """The holder's record; it may be between taking the lock and writing it, so wait a moment for a live one."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        holder = read_owner(root)
        if (holder is not None and holder.running_here() is not False) or time.monotonic() > deadline:
            return holder
        time.sleep(0.05)


@contextmanager
def _lease(root: Location, log: Callable[[str], None]) -> Iterator[Owner]:
    path = root / OWNER_FILE
    current = read_owner(root)
    now = time.time()
    if current is not None and not current.stale(now):
        raise _refusal(root, current, f", last heartbeat {now - (current.heartbeat or now):.0f} s ago")
    if current is not None:
        since = "never renewed" if current.heartbeat is None else f"last heartbeat {now - current.heartbeat:.0f} s ago"
        log(f"[lock] {root}: taking over a stale lease ({current.describe()}; {since}, timeout {LEASE_TIMEOUT_S:.0f} s)")
    owner = Owner.this_process(heartbeat=time.time())
    write_json(path, asdict(owner))
    time.sleep(SETTLE_S)  # another run writing at the same moment: the later write wins, and each reads back which
    winner = read_owner(root)
    if winner is None or winner.token != owner.token:
        raise _refusal(root, winner)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(root, owner, stop, log), name="atlas-lease", daemon=True)
    renewer.start()
    try:
        yield owner
    finally:
        stop.set()
        renewer.join()
        held = read_owner(root)
        if held is not None and held.token == owner.token:
            path.unlink(missing_ok=True)


def _renew(root: Location, owner: Owner, stop: threading.Event, log: Callable[[str], None]) -> None:
    while not stop.wait(HEARTBEAT_S):
        held = read_owner(root)
        if held is None or held.token != owner.token:
            log(f"[lock] {root}: lost the lease to {held.describe() if held else 'nobody'}; another run may now write here too")
            return
        write_json(root / OWNER_FILE, asdict(replace(owner, heartbeat=time.time())))


def sweep_temporaries(folder: Location) -> int:
    """Delete the temporary files and folders (``.NAME.XXXX.tmp``, atlas.io's names) a killed writer left in ``folder``.

    Safe only under the bundle's lock: a live writer's temporaries have the same names.
    """
    if not folder.is_dir():
        return 0
    stale: list[Location] = list(folder.glob(".*.tmp"))
    for path in stale:
        if path.is_dir():
            remove_tree(path)
        else:
            path.unlink(missing_ok=True)
    return len(stale)
