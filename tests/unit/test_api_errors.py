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
