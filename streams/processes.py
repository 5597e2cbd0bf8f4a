"""Validate in processes of its own, supervised by the process that owns the warehouse.

One Python process runs one event loop on one core. Validate needs only Kafka,
so ``tracestream serve`` runs it as child ``tracestream worker --stages
validate`` processes (members of the same validate group) while it
materializes and serves the API itself: the stages overlap and use the
machine's cores. A child that dies is started again; the children die with
their parent (PR_SET_DEATHSIG), so a killed ``serve`` leaves none behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from mode import Service

from deploy.settings import Settings

log = logging.getLogger(__name__)

_PR_SET_DEATHSIG = 1
RESTART_BACKOFF_S = 2.0


def default_validate_processes() -> int:
    """One validate child per core beyond the first (the parent's event loop keeps one busy); none on one core."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def die_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGTERM when the process that started it dies, even by SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_DEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the parent's on_stop still terminates the children
        pass


class ValidateProcesses(Service):
    """Runs ``count`` ``tracestream worker --stages validate`` children and restarts any that exits."""

    def __init__(self, settings: Settings, count: int, *, log_dir: Path, verbose: bool = False) -> None:
        super().__init__()
        self.settings = settings
        self.count = count
        self.log_dir = log_dir
        self.verbose = verbose
        self.children: list[subprocess.Popen] = []
        self.restarts = 0

    def _spawn(self, index: int) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "cli.main", "worker", "--stages", "validate", "--no-web"]
        if self.verbose:
            command.append("--verbose")
        log_file = (self.log_dir / f"validate-{index}.log").open("ab")
        try:
            return subprocess.Popen(
                command, env=self.settings.child_environment(), stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
            )
        finally:
            log_file.close()

    async def on_start(self) -> None:
        self.children = [self._spawn(index) for index in range(self.count)]
        log.info("validate runs in %d processes of its own: pids %s (logs in %s)",
                 self.count, [child.pid for child in self.children], self.log_dir)

    async def on_stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                await asyncio.to_thread(child.wait, 30)
            except subprocess.TimeoutExpired:
                child.kill()

    @Service.task
    async def _supervise(self) -> None:
        while not self.should_stop:
            await asyncio.sleep(RESTART_BACKOFF_S)
            for index, child in enumerate(self.children):
                if child.poll() is not None and not self.should_stop:
                    log.warning("validate process %d (pid %d) exited with %s; starting it again (log: %s)",
                                index, child.pid, child.returncode, self.log_dir / f"validate-{index}.log")
                    self.restarts += 1
                    self.children[index] = self._spawn(index)
