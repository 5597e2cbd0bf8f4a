"""Property-based fuzzing of every operation in the app's own OpenAPI document: no answer is a 5xx.

The API runs for real (uvicorn on a loopback port, a real broker, the real
warehouse holding a few materialized traces); schemathesis generates
requests from the OpenAPI spec, valid and invalid, and checks each answer.
Hypothesis then aims at what a spec-driven generator rarely reaches: dates at
the edges of what the warehouse and Python hold, with offsets of ±14 h;
integers beyond int64 and thousands of digits long; NaN and Infinity. Every
such answer is a 4xx in the API's error shape naming the field (or a 2xx for
a value that is fine), and the keep-alive connection survives it.
"""

from __future__ import annotations

import asyncio
import json
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
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from api.app import create_app
from deploy.settings import Settings
from devtools.generator import generate_events
from streams.catchup import wait_until_caught_up
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


# --- the classes a spec-driven generator rarely reaches -------------------------------------------

_YEARS = [1, 2, 1899, 1900, 1901, 1969, 1970, 2038, 2106, 2261, 2262, 2299, 2300, 9998, 9999]
_OFFSETS = ["Z", "+00:00", "-00:00", "+14:00", "-14:00", "+13:59", "-13:59", "+00:01", "-00:01", "+23:59", "-23:59"]
_CLOCKS = ["01-01T00:00:00", "12-31T23:59:59", "12-31T23:59:59.999", "12-31T23:59:59.999999", "06-15T12:00:00"]

boundary_dates = st.builds(lambda year, clock, offset: f"{year:04d}-{clock}{offset}",
                           st.sampled_from(_YEARS), st.sampled_from(_CLOCKS), st.sampled_from(_OFFSETS))
# JSON number tokens, as text: a Python int of thousands of digits cannot even be printed (int_max_str_digits).
def _digits(min_size: int) -> st.SearchStrategy[str]:
    return st.builds(lambda sign, first, n: f"{sign}{first}{'9' * n}", st.sampled_from(["", "-"]),
                     st.sampled_from("123456789"), st.integers(min_value=min_size, max_value=6000))


huge_integers = st.one_of(
    st.integers(min_value=2**63, max_value=10**30).map(str),
    st.integers(min_value=-(10**30), max_value=-(2**63) - 1).map(str),
    _digits(19),
)
past_float = _digits(309)  # beyond every float, so no float field takes it either
non_finite = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
non_finite_strings = st.sampled_from(['"NaN"', '"nan"', '"Infinity"', '"-Infinity"', '"inf"', '"-inf"'])
numbers = st.one_of(huge_integers, non_finite)

_TRACE = {"trace_id": "fuzz", "prompt": "p", "steps": [{"i": 0, "type": "t", "content": "c"}], "final_answer": "a"}
_BODY_CASES = {  # where a token goes in a trace: (its strategy, whether no token of it is a valid value)
    "trace_version": (st.one_of(numbers, non_finite_strings), True),
    "steps.0.i": (st.one_of(numbers, non_finite_strings), True),
    "score": (st.one_of(past_float, non_finite, non_finite_strings), True),
    "score ": (huge_integers, False),  # 2**63 is a fine float
    "created_at": (st.one_of(numbers, non_finite_strings), True),
    "created_at ": (boundary_dates.map(json.dumps), False),  # in range or not: a 2xx or a 422, never a 5xx
    "meta.k": (numbers, True),
    "prompt": (huge_integers, True),
}


def _trace_with(field: str, token: str) -> str:
    """A valid trace's JSON with ``token`` (raw JSON text) at ``field``."""
    marker = "__TOKEN__"
    trace = json.loads(json.dumps(_TRACE))
    *parents, leaf = field.split(".")
    holder = trace
    for part in parents:
        holder = holder[int(part)] if part.isdigit() else holder.setdefault(part, {})
    holder[leaf] = marker
    return json.dumps(trace).replace(json.dumps(marker), token)


def _assert_answered_in_shape(response: httpx.Response, field: str) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"code", "message", "details"}, error
        assert response.status_code == 422 and error["code"] == "invalid_request", error
        named = [d["field"] for d in error["details"]]
        assert any(f == field or f.startswith(f"{field}.") for f in named), (field, error)


def _kept_alive(client: httpx.Client, response: httpx.Response) -> None:
    """The connection that carried ``response`` carries the next request too."""
    before = response.extensions["network_stream"].get_extra_info("client_addr")
    after = client.get("/healthz")
    assert after.status_code == 200
    assert after.extensions["network_stream"].get_extra_info("client_addr") == before, "the connection was dropped"


@pytest.fixture(scope="module")
def client(live_api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_api, timeout=30, headers={"Content-Type": "application/json"}) as client:
        yield client


@hypothesis.given(case=st.sampled_from(sorted(_BODY_CASES)), batch=st.booleans(), data=st.data())
@hypothesis.settings(max_examples=120, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_bodies_with_edge_dates_huge_numbers_and_non_finite_floats_are_answered_naming_the_field(
    client: httpx.Client, case: str, batch: bool, data,
):
    strategy, never_valid = _BODY_CASES[case]
    field, token = case.strip(), data.draw(strategy, label="token")
    trace = _trace_with(field, token)
    if batch:
        response = client.post("/api/traces/batch", content=f"[{json.dumps(_TRACE)}, {trace}]")
        _assert_answered_in_shape(response, f"body.1.{field}")
    else:
        response = client.post("/api/traces", content=trace)
        _assert_answered_in_shape(response, f"body.{field}")
    if never_valid:
        assert response.status_code == 422, (token[:50], response.text[:300])
    _kept_alive(client, response)


_QUERY_NUMBERS = [("/api/traces", "limit"), ("/api/traces", "trace_version"), ("/api/dlq", "limit"),
                  ("/api/datasets/nope/export", "version")]


@hypothesis.given(where=st.sampled_from(_QUERY_NUMBERS), token=st.one_of(numbers, non_finite_strings))
@hypothesis.settings(max_examples=60, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_huge_and_non_finite_numbers_in_query_parameters_are_422s_naming_the_parameter(
    client: httpx.Client, where: tuple[str, str], token: str,
):
    path, name = where
    response = client.get(path, params={name: token.strip('"')})
    _assert_answered_in_shape(response, f"query.{name}")
    assert response.status_code == 422, response.text[:300]
    _kept_alive(client, response)


@hypothesis.given(name=st.sampled_from(["created_from", "created_until"]), value=boundary_dates)
@hypothesis.settings(max_examples=40, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_edge_dates_in_query_parameters_are_answered_without_a_server_error(
    client: httpx.Client, name: str, value: str,
):
    response = client.get("/api/traces", params={name: value})
    _assert_answered_in_shape(response, f"query.{name}")
    _kept_alive(client, response)
