"""`tracestream serve` as a user runs it: one process with the processors and the API."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deploy.settings import Settings
from devtools.generator import generate_events
from tests.conftest import free_port
from tests.integration.support import REPO, wait_for
from tests.integration.test_api_ingest import as_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_serve_ingests_over_http_and_answers_reads_from_its_own_warehouse(settings: Settings, tmp_path: Path):
    own = settings.model_copy(update={"home": tmp_path / "home", "api_port": free_port()})
    log = tmp_path / "serve.log"
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "serve"], env=own.child_environment(), cwd=REPO,
                               stdout=log.open("ab"), stderr=subprocess.STDOUT)
    base = f"http://{own.api_host}:{own.api_port}"
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                assert process.poll() is None, log.read_text()
                return False

        wait_for(ready, timeout_s=120, what="`tracestream serve` to be ready")
        batch = [as_json(e.record) for e in generate_events(120, seed=111, broken_share=0.0)]
        accepted = httpx.post(f"{base}/api/traces/batch", json=batch, timeout=60)
        assert accepted.status_code == 202, accepted.text

        def listed() -> list[dict]:
            items = httpx.get(f"{base}/api/traces", params={"limit": 500}, timeout=30).json()["items"]
            return items if len(items) >= len(batch) else []

        items = wait_for(listed, timeout_s=60, what="the posted traces to be materialized and listed")
        assert sorted(i["trace_id"] for i in items) == sorted(t["trace_id"] for t in batch)
        stats = httpx.get(f"{base}/api/stats", timeout=30).json()
        assert stats["ingest"]["traces"]["total"] == len(batch)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log.read_text()


def test_serve_api_only_answers_reads_without_processors(settings: Settings, tmp_path: Path):
    own = settings.model_copy(update={"home": tmp_path / "home", "api_port": free_port()})
    log = tmp_path / "serve.log"
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--api-only"], env=own.child_environment(),
                               cwd=REPO, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    base = f"http://{own.api_host}:{own.api_port}"
    try:
        def answers() -> httpx.Response | None:
            try:
                return httpx.get(f"{base}/api/traces", timeout=5)
            except httpx.HTTPError:
                assert process.poll() is None, log.read_text()
                return None

        response = wait_for(answers, timeout_s=60, what="`tracestream serve --api-only` to answer")
        assert response.status_code == 200 and response.json() == {"items": [], "next_cursor": None, "limit": 100}
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, log.read_text()
