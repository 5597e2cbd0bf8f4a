"""A home's records of what it runs: live processes are listed, dead ones reported once and removed, and stop works."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from deploy.running import (
    RunningProcess,
    records_dir,
    registered,
    running_processes,
    stop_processes,
)
from deploy.settings import Settings


def _record_child(settings: Settings, child: subprocess.Popen, kind: str = "worker") -> RunningProcess:
    """A record as the child would write it for itself (its start time read from /proc)."""
    ticks = int(Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    record = RunningProcess(kind, child.pid, ticks, "2026-11-30T00:00:00+00:00", {"web": 6066})
    records_dir(settings).mkdir(parents=True, exist_ok=True)
    (records_dir(settings) / f"{kind}-{child.pid}.json").write_text(json.dumps(asdict(record)))
    return record


def test_a_registered_process_is_listed_while_the_block_runs(tmp_path: Path):
    settings = Settings(home=tmp_path)
    with registered(settings, "serve", ports={"api": 8080}, urls=["http://127.0.0.1:8080"]) as me:
        running, stale = running_processes(settings)
        assert running == [me] and stale == []
    assert running_processes(settings) == ([], [])


def test_a_dead_process_is_reported_not_running_once_and_its_record_removed(tmp_path: Path):
    settings = Settings(home=tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    record = _record_child(settings, child)
    child.wait()
    assert running_processes(settings) == ([], [record])
    assert list(records_dir(settings).iterdir()) == []
    assert running_processes(settings) == ([], [])


def test_a_reused_pid_is_not_taken_for_the_recorded_process(tmp_path: Path):
    settings = Settings(home=tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = _record_child(settings, child)
        other = RunningProcess(**{**asdict(record), "started_ticks": record.started_ticks - 1})
        (records_dir(settings) / f"worker-{child.pid}.json").write_text(json.dumps(asdict(other)))
        assert running_processes(settings) == ([], [other])
    finally:
        child.kill()
        child.wait()


def test_stop_processes_stops_them_and_removes_their_records(tmp_path: Path):
    settings = Settings(home=tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    record = _record_child(settings, child)
    assert running_processes(settings)[0] == [record]
    assert stop_processes(settings, [record], timeout_s=10) == []
    child.wait(timeout=10)  # reaped here; stop_processes saw it a zombie, i.e. gone
    assert running_processes(settings) == ([], [])
