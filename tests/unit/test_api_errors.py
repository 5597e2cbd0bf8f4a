"""The one error shape, for the framework's own errors too; no infrastructure is touched."""

from __future__ import annotations

import httpx
import pytest

from api.app import create_app
from deploy.settings import Settings

pytestmark = [pytest.mark.unit, pytest.mark.asyncio, pytest.mark.timeout(30)]


def _no_warehouse():
    raise AssertionError("this request should not reach the warehouse")


@pytest.fixture
def client():
    settings = Settings(api_token="t0ken", api_max_body_bytes=1000, kafka_bootstrap=None)
    app = create_app(settings, warehouse_factory=_no_warehouse, ingest=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


async def test_unknown_paths_and_methods_answer_in_the_error_shape(client):
    async with client:
        missing = await client.get("/api/nope")
        assert missing.status_code == 404
        assert missing.json() == {"error": {"code": "not_found", "details": [],
                                            "message": "no such path /api/nope; GET /docs lists the endpoints"}}
        wrong_method = await client.delete("/api/traces")
        assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"


async def test_validation_errors_name_each_field(client):
    async with client:
        response = await client.get("/api/traces", params={"limit": 0, "trace_version": "x"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert {d["field"] for d in error["details"]} == {"query.limit", "query.trace_version.0"}


async def test_ingest_checks_the_token_before_the_body_and_the_body_size_before_reading_it(client):
    async with client:
        no_token = await client.post("/api/traces", json={})
        assert no_token.status_code == 401 and no_token.headers["www-authenticate"] == "Bearer"
        too_big = await client.post("/api/traces/batch", content=b"[" + b" " * 2000 + b"]",
                                    headers={"Authorization": "Bearer t0ken", "Content-Type": "application/json"})
        assert too_big.status_code == 413
        assert "1,000" in too_big.json()["error"]["message"]
        no_kafka = await client.post("/api/traces", headers={"Authorization": "Bearer t0ken"}, json={
            "prompt": "p", "steps": [{"i": 0, "type": "t", "content": "c"}], "final_answer": "a"})
        assert no_kafka.status_code == 503 and "TRACESTREAM_KAFKA_BOOTSTRAP" in no_kafka.json()["error"]["message"]


async def test_the_openapi_document_has_examples_and_the_error_schema():
    spec = create_app(Settings()).openapi()
    post = spec["paths"]["/api/traces/batch"]["post"]
    assert post["responses"]["422"]["content"]["application/json"]["schema"]["required"] == ["error"]
    assert post["requestBody"]["content"]["application/json"].get("examples") or \
        post["requestBody"]["content"]["application/json"]["schema"].get("examples")
    assert "example" in spec["components"]["schemas"]["TraceSummary"]


class _Encoder:
    """A publisher that encodes like the real one and must never be asked to publish (every body is refused)."""

    def __init__(self) -> None:
        from schemas.codec import AvroCodec
        from schemas.registry import default_registry

        self.codec = AvroCodec(default_registry())
        self.producer = self
        self.topic = "raw"

    def encode(self, record: dict) -> bytes:
        return self.codec.encode(record, "Trace", None)

    async def publish(self, events):
        raise AssertionError("a refused body reached the publisher")


_TRACE = '"prompt": "p", "steps": [{"i": 0, "type": "t", "content": "c"}], "final_answer": "a"'
_HUGE = "9" * 5000
_BAD_BODIES = [  # (a field's JSON, the field named in the answer)
    ('"created_at": "9999-12-31T23:59:59-14:00"', "created_at"),
    ('"created_at": "0001-01-01T00:00:00+14:00"', "created_at"),
    ('"created_at": "1899-12-31T23:59:59+00:00"', "created_at"),
    ('"created_at": "2299-12-31T23:59:59-14:00"', "created_at"),
    (f'"created_at": {_HUGE}', "created_at"),
    (f'"trace_version": {_HUGE}', "trace_version"),
    (f'"trace_version": -{_HUGE}', "trace_version"),
    ('"trace_version": 99999999999999999999', "trace_version"),
    ('"trace_version": 1e400', "trace_version"),
    (f'"score": {_HUGE}', "score"),
    ('"score": 1e400', "score"),
    ('"score": "NaN"', "score"),
    ('"score": -Infinity', "score"),
    (f'"meta": {{"k": {_HUGE}}}', "meta.k"),
]


@pytest.mark.parametrize(("field_json", "field"), _BAD_BODIES)
async def test_every_number_and_date_a_body_carries_is_a_422_naming_the_field(field_json, field):
    settings = Settings(api_token="t0ken", kafka_bootstrap=None)
    app = create_app(settings, warehouse_factory=_no_warehouse, ingest=False)
    app.state.api.publisher = _Encoder()
    headers = {"Authorization": "Bearer t0ken", "Content-Type": "application/json"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        one = await client.post("/api/traces", content=f"{{{_TRACE}, {field_json}}}", headers=headers)
        batch = await client.post("/api/traces/batch", content=f"[{{{_TRACE}}}, {{{_TRACE}, {field_json}}}]",
                                  headers=headers)
        step = await client.post("/api/traces", headers=headers, content=_TRACE.replace('"i": 0', f'"i": {_HUGE}')
                                 .join("{}"))
    for response, where in ((one, f"body.{field}"), (batch, f"body.1.{field}"), (step, "body.steps.0.i")):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_request"
        assert [d["field"] for d in error["details"]] == [where], error
