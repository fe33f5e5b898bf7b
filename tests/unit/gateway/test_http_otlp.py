"""OTLP/HTTP POST /v1/metrics: encodings, compression, and every refusal's status and body."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from gateway_fixtures import attributes_of, counter_request, run
from gateway_http_fixtures import HttpGateway, http_gateway, metrics_lines
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from gateway.errors import GatewayError
from gateway.tenants import Tenant

PROTOBUF = {"content-type": "application/x-protobuf"}
JSON = {"content-type": "application/json"}

OTLP_JSON: dict[str, Any] = {
    "resourceMetrics": [
        {
            "resource": {
                "attributes": [
                    {"key": "service.name", "value": {"stringValue": "json-connector"}},
                    {"key": "tenant_id", "value": {"stringValue": "globex"}},
                ]
            },
            "scopeMetrics": [
                {
                    "scope": {"name": "test", "futureField": 1},
                    "metrics": [
                        {
                            "name": "connector.bytes_sent",
                            "unit": "By",
                            "sum": {
                                "aggregationTemporality": 2,
                                "isMonotonic": True,
                                "dataPoints": [
                                    {
                                        "asInt": "9007199254740993",
                                        "timeUnixNano": 1700000000000000000,
                                        "exemplars": [
                                            {
                                                "asInt": "1",
                                                "traceId": "5b8efff798038103d269b633813fc60c",
                                                "spanId": "eee19b7ec3c1b174",
                                            }
                                        ],
                                    }
                                ],
                            },
                        }
                    ],
                }
            ],
        }
    ]
}


def _post(
    http: HttpGateway, body: bytes, headers: dict[str, str], tenant: str | None = "acme"
) -> Any:
    auth = http.auth(tenant) if tenant else {}
    return http.client.post("/v1/metrics", content=body, headers={**headers, **auth})


def test_protobuf_is_stamped_forwarded_and_answered_in_protobuf(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            answer = await _post(http, counter_request(value=42).SerializeToString(), PROTOBUF)
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "application/x-protobuf"
            assert ExportMetricsServiceResponse.FromString(answer.content) == (
                ExportMetricsServiceResponse()
            )
            (forwarded,) = http.collector.received
            point = forwarded.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
            assert point.as_int == 42
            assert attributes_of(point.attributes) == {"tenant_id": "acme"}

    run(scenario())


def test_otlp_json_with_camel_case_string_int64_hex_ids_and_unknown_fields(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            answer = await _post(
                http,
                json.dumps(OTLP_JSON).encode(),
                {"content-type": "application/json; charset=utf-8"},
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"] == "application/json"
            assert answer.json() == {}
            (forwarded,) = http.collector.received
            resource = forwarded.resource_metrics[0]
            assert attributes_of(resource.resource.attributes) == {
                "service.name": "json-connector",
                "tenant_id": "acme",
            }
            metric = resource.scope_metrics[0].metrics[0]
            assert metric.sum.is_monotonic
            assert metric.sum.aggregation_temporality == 2
            point = metric.sum.data_points[0]
            assert point.as_int == 9007199254740993  # beyond a double's precision
            assert point.time_unix_nano == 1700000000000000000
            assert attributes_of(point.attributes) == {"tenant_id": "acme"}
            assert point.exemplars[0].trace_id.hex() == "5b8efff798038103d269b633813fc60c"
            assert point.exemplars[0].span_id.hex() == "eee19b7ec3c1b174"

    run(scenario())


@pytest.mark.parametrize("content_type", ["application/x-protobuf", "application/json"])
def test_gzip_bodies_are_accepted(tmp_path: Path, content_type: str) -> None:
    body = (
        counter_request().SerializeToString()
        if content_type == "application/x-protobuf"
        else json.dumps(OTLP_JSON).encode()
    )

    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            headers = {"content-type": content_type, "content-encoding": "gzip"}
            answer = await _post(http, gzip.compress(body), headers)
            assert answer.status_code == 200, answer.text
            assert len(http.collector.received) == 1

    run(scenario())


def _status(answer: Any) -> Any:
    if answer.headers["content-type"] == "application/json":
        document = answer.json()
        return Status(code=document.get("code", 0), message=document.get("message", ""))
    return Status.FromString(answer.content)


@pytest.mark.parametrize(
    ("body", "headers", "tenant", "http_status", "grpc_code", "says"),
    [
        (b"", PROTOBUF, None, 401, grpc.StatusCode.UNAUTHENTICATED, "Bearer"),
        (b"{}", JSON, None, 401, grpc.StatusCode.UNAUTHENTICATED, "Bearer"),
        (b"x", {"content-type": "text/plain"}, "acme", 415, None, "application/x-protobuf"),
        (b"", {}, "acme", 415, None, "application/json"),
        (b"x", {**PROTOBUF, "content-encoding": "br"}, "acme", 415, None, "gzip"),
        (b"\xff\xff\xff", PROTOBUF, "acme", 400, grpc.StatusCode.INVALID_ARGUMENT, "protobuf"),
        (b"{not json", JSON, "acme", 400, grpc.StatusCode.INVALID_ARGUMENT, "JSON"),
        (b"[]", JSON, "acme", 400, grpc.StatusCode.INVALID_ARGUMENT, "object"),
        (b'{"resourceMetrics": 3}', JSON, "acme", 400, None, "resourceMetrics"),
        (b"not gzip", {**PROTOBUF, "content-encoding": "gzip"}, "acme", 400, None, "gzip"),
        (
            gzip.compress(b"x")[:-4],
            {**PROTOBUF, "content-encoding": "gzip"},
            "acme",
            400,
            None,
            "truncated",
        ),
    ],
)
def test_refusals_carry_a_status_body_in_the_request_encoding(
    tmp_path: Path,
    body: bytes,
    headers: dict[str, str],
    tenant: str | None,
    http_status: int,
    grpc_code: grpc.StatusCode | None,
    says: str,
) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            answer = await _post(http, body, headers, tenant)
            assert answer.status_code == http_status
            expected_type = "application/x-protobuf" if headers == PROTOBUF else "application/json"
            if headers.get("content-encoding") is None:
                assert answer.headers["content-type"] == expected_type
            status = _status(answer)
            if grpc_code is not None:
                assert status.code == grpc_code.value[0]
            assert says in status.message
            assert "retry-after" not in answer.headers
            assert http.collector.received == []

    run(scenario())


def test_a_body_over_the_limit_is_refused_413_compressed_or_not(tmp_path: Path) -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)  # ~1 KB that inflates to 1 MB
    assert len(bomb) < 2000

    async def scenario() -> None:
        async with http_gateway(tmp_path, max_request_bytes=100_000) as http:
            inflated = await _post(http, bomb, {**PROTOBUF, "content-encoding": "gzip"})
            plain = await _post(http, b"\0" * 100_001, PROTOBUF)
            for answer in (inflated, plain):
                assert answer.status_code == 413
                message = _status(answer).message
                assert "100000 bytes" in message
                assert "GATEWAY_MAX_REQUEST_BYTES" in message
            assert http.collector.received == []

    run(scenario())


def test_collector_unavailable_is_503_with_retry_after(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            http.collector.status = grpc.StatusCode.UNAVAILABLE
            answer = await _post(http, counter_request().SerializeToString(), PROTOBUF)
            assert answer.status_code == 503
            assert int(answer.headers["retry-after"]) >= 1
            assert _status(answer).code == grpc.StatusCode.UNAVAILABLE.value[0]

    run(scenario())


class _RateLimited(GatewayError):
    reason = "rate_limited"
    http_status = 429
    grpc_status: ClassVar[grpc.StatusCode] = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self) -> None:
        super().__init__("over 20 requests/s; raise GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND")
        self.retry_after_seconds = 3.2


def test_a_rate_limit_error_is_429_with_its_retry_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:

            def refuse(tenant: Tenant, body_bytes: int, work: object = None) -> None:
                raise _RateLimited()

            monkeypatch.setattr(http.gateway.ingestor, "admit", refuse)
            answer = await _post(http, json.dumps(OTLP_JSON).encode(), JSON)
            assert answer.status_code == 429
            assert answer.headers["retry-after"] == "4"
            assert answer.json()["message"].startswith("rate_limited: over 20 requests/s")

    run(scenario())


@pytest.mark.parametrize("headers", [PROTOBUF, JSON])
def test_partial_success_is_passed_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, headers: dict[str, str]
) -> None:
    partial = ExportMetricsServiceResponse()
    partial.partial_success.rejected_data_points = 3
    partial.partial_success.error_message = "3 points over the series limit"
    body = (
        counter_request().SerializeToString()
        if headers == PROTOBUF
        else json.dumps(OTLP_JSON).encode()
    )

    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:

            async def ingest(
                tenant: Tenant,
                request: ExportMetricsServiceRequest,
                raw: bytes | None = None,
                work: object = None,
            ) -> ExportMetricsServiceResponse:
                return partial

            monkeypatch.setattr(http.gateway.ingestor, "ingest", ingest)
            answer = await _post(http, body, headers)
            assert answer.status_code == 200
            if headers == PROTOBUF:
                assert ExportMetricsServiceResponse.FromString(answer.content) == partial
            else:
                assert answer.json() == {
                    "partialSuccess": {
                        "rejectedDataPoints": "3",
                        "errorMessage": "3 points over the series limit",
                    }
                }

    run(scenario())


def test_http_exports_are_counted_with_transport_http(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            await _post(http, counter_request().SerializeToString(), PROTOBUF)
            await _post(http, b"", PROTOBUF, tenant=None)
            text = (await http.client.get("/metrics")).text
            requests = metrics_lines(text, "gateway_requests_total{")
            assert any(
                'outcome="accepted"' in line
                and 'tenant_id="acme"' in line
                and 'transport="http"' in line
                for line in requests
            )
            assert any(
                'outcome="unauthenticated"' in line
                and 'tenant_id="unknown"' in line
                and 'transport="http"' in line
                for line in requests
            )
            failures = metrics_lines(text, "gateway_auth_failures_total{")
            assert any('transport="http"' in line for line in failures)
            assert metrics_lines(text, "gateway_requests_in_flight")[0].endswith(" 0.0")

    run(scenario())


def test_an_empty_partial_success_is_left_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Collector sets partial_success empty on success; the specification wants it unset."""
    empty = ExportMetricsServiceResponse()
    empty.partial_success.SetInParent()

    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:

            async def forward(request: ExportMetricsServiceRequest) -> ExportMetricsServiceResponse:
                return empty  # what the Collector answers

            monkeypatch.setattr(http.gateway.forwarder, "forward", forward)
            answer = await _post(http, json.dumps(OTLP_JSON).encode(), JSON)
            assert answer.json() == {}

    run(scenario())
