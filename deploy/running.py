"""What a home has running: one record per long-lived tracestream process (serve, worker, trainer, demo).

The local broker records itself (``broker.json`` in its data folder, see
``deploy.kafka_broker``); these records do the same for the other processes, so that
``tracestream stack status`` and ``stack stop|down``, run from another shell,
can find them. A record holds the pid and that process's start time: a record
whose process died without removing it (SIGKILL, a reboot), or whose pid now
belongs to another process, is stale, and is removed when read.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from deploy.settings import Settings

__all__ = ["RunningProcess", "process_alive", "records_dir", "registered", "running_processes", "stop_processes"]


@dataclass(frozen=True)
class RunningProcess:
    """One long-lived process of a home, as its record says."""

    kind: str
    """``serve``, ``worker``, ``trainer`` or ``demo``: the tracestream command it runs."""
    pid: int
    started_ticks: int | None
    """The process's start time in clock ticks after boot (``/proc/PID/stat``); tells a reused pid apart."""
    started_at: str
    """ISO 8601 UTC time the record was written."""
    ports: dict[str, int] = field(default_factory=dict)
    """What it listens on, by role: ``{"api": 8080, "web": 6066}``."""
    urls: list[str] = field(default_factory=list)
    """Addresses a person can open while it runs."""
    detail: str = ""
    """One line on what it does (stages, app id, policy)."""
    parent: int | None = None
    """The pid of the process that started it (``serve`` starts validate workers)."""
    holds: list[str] = field(default_factory=list)
    """What it keeps to itself: ``warehouse`` for the embedded chDB folder, which one process may open."""

    def describe(self) -> str:
        """``serve (pid 123)``: how messages name it."""
        return f"{self.kind} (pid {self.pid})"


def records_dir(settings: Settings) -> Path:
    return settings.home.expanduser().resolve() / "run"


def _record_path(settings: Settings, kind: str, pid: int) -> Path:
    return records_dir(settings) / f"{kind}-{pid}.json"


@contextlib.contextmanager
def registered(
    settings: Settings, kind: str, *, ports: Mapping[str, int] | None = None, urls: Sequence[str] = (),
    detail: str = "", holds: Sequence[str] = (),
) -> Iterator[RunningProcess]:
    """Record this process in its home while the block runs; the record goes when the block ends."""
    pid = os.getpid()
    record = RunningProcess(kind, pid, _start_ticks(pid), datetime.now(UTC).isoformat(timespec="seconds"),
                            dict(ports or {}), list(urls), detail, os.getppid(), list(holds))
    path = _record_path(settings, kind, pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    try:
        yield record
    finally:
        path.unlink(missing_ok=True)


def running_processes(settings: Settings) -> tuple[list[RunningProcess], list[RunningProcess]]:
    """The home's records as (running, stale); stale records (dead or reused pids) are removed."""
    alive: list[RunningProcess] = []
    stale: list[RunningProcess] = []
    folder = records_dir(settings)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = RunningProcess(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)  # half a file from a crash, or not ours: nothing can be stopped by it
            continue
        if process_alive(record):
            alive.append(record)
        else:
            stale.append(record)
            path.unlink(missing_ok=True)
    return sorted(alive, key=lambda r: (r.started_at, r.pid)), stale


def process_alive(record: RunningProcess) -> bool:
    """Whether the record's process still runs (not a zombie, not a later process with the same pid)."""
    stat = _stat_fields(record.pid)
    if stat is None:
        if Path("/proc").is_dir():
            return False
        try:  # no /proc (macOS): all we can tell is whether the pid exists
            os.kill(record.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, ticks = stat
    return state != "Z" and (record.started_ticks is None or ticks == record.started_ticks)


def stop_processes(
    settings: Settings, records: Sequence[RunningProcess], timeout_s: float = 30
) -> list[RunningProcess]:
    """SIGTERM each (a clean stop: commits, a run in progress cancelled), SIGKILL what is left after ``timeout_s``.

    Returns those that had to be killed.
    """
    for record in records:
        _signal(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    left = [r for r in records if process_alive(r)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [r for r in left if process_alive(r)]
    for record in left:
        _signal(record.pid, signal.SIGKILL)
    for record in records:  # a killed process could not remove its own record
        if not process_alive(record):
            _record_path(settings, record.kind, record.pid).unlink(missing_ok=True)
    return left


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _stat_fields(pid: int) -> tuple[str, int] | None:
    """(state, start ticks) from /proc/PID/stat, or None when there is no such process (or no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    rest = text.rsplit(")", 1)[-1].split()  # the command name (field 2) may hold spaces and parentheses
    return rest[0], int(rest[19])  # fields 3 (state) and 22 (starttime)


def _start_ticks(pid: int) -> int | None:
    stat = _stat_fields(pid)
    return stat[1] if stat else None
