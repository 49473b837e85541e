"""One writer per bundle: a second `atlas run` or `atlas classes` refuses at once, a killed holder's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from atlas import lock
from atlas.lock import LOCK_FILE, OWNER_FILE, BundleLocked, Owner, bundle_lock, read_owner, sweep_temporaries
from atlas.storage import location
from atlas_pipelines.commands.cli import main

HOLDER = """
import sys, time
from pathlib import Path
from atlas.lock import bundle_lock
with bundle_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock of tmp_path/bundle (killed at the end whatever happens)."""
    root = tmp_path / "bundle"
    root.mkdir()
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_second_run_into_a_locked_bundle_refuses_at_once_naming_the_holder(
    holder: subprocess.Popen[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()
    code = main(["run", "--out", str(tmp_path), "--name", "bundle", "--scheduler", "sync"])
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err.strip()
    assert code == 2 and seconds < 5, "refused before loading the model"
    assert len(err.splitlines()) == 1 and err.startswith("atlas: error: ")
    assert f"pid {holder.pid} on {socket.gethostname()}, started 20" in err and "command: -c" in err
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [LOCK_FILE, OWNER_FILE], "the refused run wrote nothing"


def test_atlas_classes_takes_the_same_lock(holder: subprocess.Popen[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bundle" / "manifest.json").write_text("{}")
    assert main(["classes", str(tmp_path / "bundle"), "--class", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pid {holder.pid}" in err and "another atlas process is writing this bundle" in err


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_log_line(holder: subprocess.Popen[str], tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    record = read_owner(root)
    assert record is not None and record.pid == holder.pid
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lines: list[str] = []
    with bundle_lock(root, lines.append) as owner:
        assert owner.pid == os.getpid() and read_owner(root) == owner
    assert len(lines) == 1 and "[lock]" in lines[0] and "taking over" in lines[0]
    assert f"pid {holder.pid}" in lines[0] and "no longer running" in lines[0]
    assert not (root / OWNER_FILE).exists(), "released: no record left"
    with bundle_lock(root, lines.append):  # a clean release is no take-over
        pass
    assert len(lines) == 1


def test_the_lock_is_released_on_error_and_on_ctrl_c(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--layer", "blocks.44", "--out", str(tmp_path), "--name", "bad", "--scheduler", "sync"]) == 2
    assert "blocks.44" in capsys.readouterr().err
    assert not (tmp_path / "bad" / OWNER_FILE).exists()
    with pytest.raises(KeyboardInterrupt), bundle_lock(tmp_path / "bad"):
        raise KeyboardInterrupt
    lines: list[str] = []
    with bundle_lock(tmp_path / "bad", lines.append):  # taken again at once, and nothing to take over
        pass
    assert lines == []


def test_two_bundles_are_locked_independently(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with bundle_lock(tmp_path / "a"), bundle_lock(tmp_path / "b"):
        assert read_owner(tmp_path / "a") is not None and read_owner(tmp_path / "b") is not None


@pytest.fixture
def quick_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock, "SETTLE_S", 0.01)
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(lock, "LEASE_TIMEOUT_S", 1.0)


def _foreign(heartbeat: float) -> Owner:
    return Owner(pid=4321, host="worker-7", started="2026-01-01T00:00:00+00:00", command="atlas run", token="x", heartbeat=heartbeat)


def test_a_remote_bundle_is_leased_with_a_heartbeat(quick_lease: None) -> None:
    root = location("memory://atlas-lock-test/bundle")
    root.mkdir(parents=True, exist_ok=True)
    # A live lease (recent heartbeat) from another machine: refused, naming it.
    (root / OWNER_FILE).write_text(json.dumps(asdict(_foreign(time.time()))))
    with pytest.raises(BundleLocked, match=r"pid 4321 on worker-7, started 2026-01-01.*last heartbeat \d+ s ago"), bundle_lock(root):
        pass
    # The same lease gone stale (no heartbeat for longer than the timeout): taken over, with a log line.
    (root / OWNER_FILE).write_text(json.dumps(asdict(_foreign(time.time() - 5))))
    lines: list[str] = []
    with bundle_lock(root, lines.append) as owner:
        first = read_owner(root)
        assert first is not None and first.token == owner.token and first.heartbeat is not None
        time.sleep(0.3)
        renewed = read_owner(root)
        assert renewed is not None and renewed.heartbeat is not None and renewed.heartbeat > first.heartbeat
    assert len(lines) == 1 and "taking over a stale lease" in lines[0] and "pid 4321" in lines[0]
    assert not (root / OWNER_FILE).exists()


def test_a_lease_taken_by_another_run_is_reported_lost(quick_lease: None) -> None:
    root = location("memory://atlas-lock-test/lost")
    root.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    with bundle_lock(root, lines.append):
        (root / OWNER_FILE).write_text(json.dumps(asdict(_foreign(time.time()))))
        time.sleep(0.2)
    assert any("lost the lease to pid 4321" in line for line in lines)
    held = read_owner(root)
    assert held is not None and held.pid == 4321, "the other run's lease is left alone"


def test_sweep_removes_only_temporaries(tmp_path: Path) -> None:
    (tmp_path / "0_0.png").write_bytes(b"icon")
    (tmp_path / ".batch-00000.json").write_text("{}")
    (tmp_path / ".0_1.png.k2j3.tmp").write_bytes(b"half")
    (tmp_path / ".4.abcd.tmp" / "4_files" / "0").mkdir(parents=True)
    assert sweep_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".batch-00000.json", "0_0.png"]
    assert sweep_temporaries(tmp_path / "missing") == 0
