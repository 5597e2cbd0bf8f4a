"""`tracestream stack status` lists what a home runs, with pids and ports; `stack stop` stops it by pid; a process
that died without a word is reported not running and its record cleaned up; a demo will not start beside a
process that holds the home's embedded warehouse."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict
from pathlib import Path

import pytest

from deploy.settings import Settings
from deploy.stack import stack_status
from tests.integration.support import cli, start_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _status(settings: Settings) -> dict:
    """What `stack status --json` prints, read in this process (polling through the CLI costs seconds a call)."""
    return json.loads(json.dumps(asdict(stack_status(settings)), default=str))


def test_status_lists_workers_with_pid_and_port_and_stop_and_stale_records(settings: Settings, tmp_path: Path):
    home = settings.model_copy(update={"home": tmp_path})
    killed = start_worker(home, "--stages", "validate", "--no-web", log=tmp_path / "validate.log")
    served = start_worker(home, log=tmp_path / "worker.log")
    try:
        wait_for(lambda: {p["pid"] for p in _status(home)["processes"]} >= {killed.pid, served.pid}, timeout_s=120,
                 what="both workers to record themselves")
        as_json = cli(home, "stack", "status", "--json")
        assert as_json.returncode == 0, as_json.stderr
        listed = {p["pid"]: p for p in json.loads(as_json.stdout)["processes"]}
        assert listed[served.pid]["kind"] == "worker"
        assert listed[served.pid]["ports"] == {"web": settings.web_port}
        assert listed[served.pid]["holds"] == ["warehouse"]
        assert listed[killed.pid]["detail"].startswith("stages validate") and listed[killed.pid]["ports"] == {}

        text = cli(home, "stack", "status")
        assert text.returncode == 0
        for pid in (killed.pid, served.pid):
            assert str(pid) in text.stdout
        assert f"web :{settings.web_port}" in text.stdout

        killed.send_signal(signal.SIGKILL)  # dies without removing its record
        killed.wait()
        after = cli(home, "stack", "status")
        assert f"not running: worker (pid {killed.pid})" in " ".join(after.stdout.split())
        assert not (tmp_path / "run" / f"worker-{killed.pid}.json").exists()
        assert [p["pid"] for p in _status(home)["processes"]] == [served.pid]

        demo = cli(home, "demo")  # its serve would need the warehouse this worker holds
        assert demo.returncode == 2
        assert f"worker (pid {served.pid}) holds the embedded warehouse" in " ".join(demo.stderr.split())

        refused = cli(home, "stack", "stop", str(killed.pid))
        assert refused.returncode == 2 and f"{killed.pid}: not a process of" in " ".join(refused.stderr.split())

        stopped = cli(home, "stack", "stop", str(served.pid))
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped worker (pid {served.pid})" in stopped.stderr
        assert served.wait(timeout=30) is not None
        assert _status(home)["processes"] == [] and _status(home)["stale"] == []
    finally:
        for process in (killed, served):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
