"""The README's first command: `tracestream demo` runs the main job end to end and passes its own checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.settings import Settings
from tests.integration.support import cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def test_demo_publishes_materializes_snapshots_and_trains(settings: Settings, tmp_path: Path):
    # Its own home: the demo's `serve` owns an embedded warehouse folder, and this process may own the session's.
    done = cli(settings.model_copy(update={"home": tmp_path}), "demo", "--count", "400", "--timeout", "300",
               timeout_s=380)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = [line for line in done.stdout.splitlines() if line.startswith(("ok ", "FAIL"))]
    assert len(checks) == 9 and all(line.startswith("ok ") for line in checks), checks
    assert "its ready event started exactly one training run, which completed" in done.stdout
