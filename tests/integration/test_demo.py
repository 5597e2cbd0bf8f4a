"""The README's first command: `tracestream demo` runs the main job end to end, passes its own checks, and
leaves the machine as it found it: what it started is stopped when it ends (passing or interrupted) unless
--keep, and a broker that already ran is used and left running."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deploy.settings import Settings
from tests.integration.support import REPO, cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def processes_of(home: Path) -> dict[int, str]:
    """Every live process (by pid) whose environment names this home: the demo's broker, serve, trainer, children."""
    marker = f"TRACESTREAM_HOME={home}".encode() + b"\0"
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes() and alive(int(proc.name)):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def alive(pid: int) -> bool:
    """Whether the pid runs (a zombie waiting for a parent that never reaps it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def own_stack(settings: Settings, home: Path) -> Settings:
    """A fresh home with no broker configured: the demo starts the local broker itself, as on a new machine."""
    return settings.model_copy(update={"home": home, "kafka_bootstrap": None})


def passed(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = [line for line in done.stdout.splitlines() if line.startswith(("ok ", "FAIL"))]
    assert len(checks) == 9 and all(line.startswith("ok ") for line in checks), checks
    assert "its ready event started exactly one training run, which completed" in done.stdout


@pytest.mark.timeout(760)  # two whole demos, each up to 380 s
def test_demo_run_twice_passes_and_leaves_no_process_of_its_own(settings: Settings, tmp_path: Path):
    demo_settings = own_stack(settings, tmp_path)
    for _ in range(2):
        done = cli(demo_settings, "demo", "--count", "300", "--timeout", "300", timeout_s=380)
        passed(done)
        stopped = [int(pid) for pid in re.findall(r"pid\s+(\d+)", done.stderr.split("stopped ")[-1])]
        assert len(stopped) == 3, done.stderr[-2000:]  # serve, trainer and the broker it started
        assert not [pid for pid in stopped if alive(pid)]
        assert processes_of(tmp_path) == {}
        assert "http://" not in done.stdout  # no address that is dead by the time it is read
        assert not (tmp_path / "kafka" / "broker.json").exists()


def interrupt_once_running(demo_settings: Settings, home: Path, *options: str, with_broker: bool):
    """Start the demo, wait until its serve and trainer (and broker) run, then press Ctrl-C.

    Returns the processes of the home that ran at that moment, and the demo's exit code, stdout and stderr.
    """
    demo = subprocess.Popen([sys.executable, "-m", "cli.main", "demo", "--count", "300", *options], cwd=REPO,
                            env=demo_settings.child_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        def started() -> list[int] | None:
            paths = [*(home / "run").glob("serve-*.json"), *(home / "run").glob("trainer-*.json")]
            if with_broker:
                paths += [broker for broker in [home / "kafka" / "broker.json"] if broker.exists()]
            if demo.poll() is not None:
                pytest.fail(f"the demo ended before it was interrupted: {demo.communicate()}")
            return [json.loads(path.read_text())["pid"] for path in paths] if len(paths) == 2 + with_broker else None

        pids = wait_for(started, timeout_s=180, what="the demo's serve and trainer to run")
        running = processes_of(home)
        assert set(pids) <= set(running) and demo.pid in running
        demo.send_signal(signal.SIGINT)  # what Ctrl-C sends; the children run in sessions of their own
        out, err = demo.communicate(timeout=180)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, err[-2000:]
    assert "interrupted" in err
    return running, out, err


def test_ctrl_c_stops_everything_the_demo_started(settings: Settings, tmp_path: Path):
    running, _, _ = interrupt_once_running(own_stack(settings, tmp_path), tmp_path, with_broker=True)
    assert len(running) >= 4  # the demo, its broker, serve (and its validate children), trainer
    assert not [pid for pid in running if alive(pid)], {pid: running[pid] for pid in running if alive(pid)}
    assert processes_of(tmp_path) == {}


def test_keep_leaves_it_running_where_it_says_until_the_command_it_prints(settings: Settings, tmp_path: Path):
    """Here a broker already runs (the session's): the demo uses it, and its stop command leaves it alone."""
    running, out, _ = interrupt_once_running(settings.model_copy(update={"home": tmp_path}), tmp_path, "--keep",
                                             with_broker=False)
    kept = out.split("still running (--keep):")[1]
    assert "broker" not in kept  # it did not start one
    pids = [int(pid) for pid in re.findall(r"pid\s+(\d+)", kept)]
    try:
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        dashboard = re.search(r"dashboard (\S+)", kept).group(1)
        wait_for(lambda: _answers(dashboard), timeout_s=120, what=f"{dashboard} to answer")
        stop = re.search(r"stop it all: (.+)", kept).group(1)
        assert "stack stop" in stop and all(str(pid) in stop for pid in pids)
        stopped = subprocess.run(stop, shell=True, cwd=REPO, capture_output=True, text=True, timeout=120,
                                 check=False)  # pasted into a shell
        assert stopped.returncode == 0, stopped.stderr
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not [pid for pid in running if alive(pid)]
    assert processes_of(tmp_path) == {}
    host, port = settings.kafka_bootstrap.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=5).close()  # the broker it found still runs


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5, follow_redirects=True).status_code == 200
    except httpx.HTTPError:
        return False
