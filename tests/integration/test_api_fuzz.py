"""Property-based fuzzing of every operation in the app's own OpenAPI document: no answer is a 5xx.

The API runs for real (uvicorn on a loopback port, a real broker, the real
warehouse holding a few materialized traces); schemathesis generates
requests from the OpenAPI spec, valid and invalid, and checks each answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import hypothesis
import pytest
import schemathesis
import uvicorn
from schemathesis.checks import not_a_server_error

from api.app import create_app
from deploy.settings import Settings
from streams.catchup import wait_until_caught_up
from streams.generator import generate_events
from tests.conftest import free_port
from tests.integration.support import kafka_of, publish, running_processors

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@pytest.fixture(scope="module")
def live_api(kafka_bootstrap: str, session_home: Path) -> Iterator[str]:
    run = uuid.uuid4().hex[:10]
    settings = Settings(home=session_home, kafka_bootstrap=kafka_bootstrap, topic_prefix=f"t{run}.",
                        app_id=f"fuzz-{run}", clickhouse_database=f"fuzz_{run}", partitions=2,
                        web_port=free_port(), api_port=free_port(), materialize_batch_seconds=0.1)

    async def seed() -> None:
        await publish(settings, generate_events(60, seed=7, broken_share=0.2))
        async with running_processors(settings):
            await wait_until_caught_up(settings, kafka_of(settings))

    asyncio.run(seed())
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.api_port,
                                           access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, name="fuzzed-api", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{settings.api_port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    assert httpx.get(f"{base_url}/api/traces", timeout=10).json()["items"], "no seed traces to read"
    try:
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@schema.parametrize()
@hypothesis.settings(max_examples=10, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck),
                     phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
def test_no_operation_answers_with_a_server_error(case, live_api: str):
    case.call_and_validate(base_url=live_api, checks=[not_a_server_error], timeout=30)
