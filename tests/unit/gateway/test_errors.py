"""Every refusal is a row of REASONS, mapped to HTTP and gRPC in one place each."""

from __future__ import annotations

import grpc
import pytest
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]

from gateway import errors
from gateway.errors import REASONS, GatewayError, Overloaded, RateLimited, Unauthenticated
from gateway.grpc_server import grpc_status
from gateway.http_edge import json_refusal, refusal_headers


def _subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_refusal_class_is_a_row_of_the_table_with_its_statuses() -> None:
    # Import every module that defines refusals, so that none escapes the check.
    import gateway.http_app
    import gateway.legacy  # noqa: F401

    classes = [GatewayError, *_subclasses(GatewayError)]
    assert {cls.reason for cls in classes} == {
        r.id for r in REASONS.values() if r.refuses == "request"
    }
    for cls in classes:
        row = REASONS[cls.reason]
        assert (cls.http_status, cls.grpc_status) == (row.http_status, row.grpc_status)


def test_a_class_cannot_invent_a_reason() -> None:
    with pytest.raises(KeyError):

        class Invented(GatewayError, reason="invented"):  # type: ignore[misc]
            pass


@pytest.mark.parametrize(
    ("error", "retry_after", "authenticate"),
    [
        (RateLimited("over", retry_after_seconds=3.2), "4", False),
        (Overloaded("full", retry_after_seconds=1.0), "1", False),
        (errors.CollectorUnavailable("down"), "2", False),
        (Unauthenticated("no", cause="missing"), None, True),
        (errors.TenantMismatch("other"), None, False),
        (errors.InvalidReport("bad", [{"loc": ["body", "x"]}]), None, False),
    ],
)
def test_one_http_mapping_for_every_route(
    error: GatewayError, retry_after: str | None, authenticate: bool
) -> None:
    headers = refusal_headers(error)
    assert headers.get("Retry-After") == retry_after
    assert ("WWW-Authenticate" in headers) is authenticate
    answer = json_refusal(error, {"Cache-Control": "no-store"})
    assert answer.status == error.http_status
    assert answer.headers == {**headers, "Cache-Control": "no-store"}
    assert b'"error":"' + error.reason.encode() in answer.body


def test_the_grpc_mapping_carries_retry_info_in_both_trailers() -> None:
    code, details, trailers = grpc_status(RateLimited("over", retry_after_seconds=2.5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("rate_limited: ")
    found = dict(trailers)
    delay = RetryInfo.FromString(found["google.rpc.retryinfo-bin"]).retry_delay
    assert (delay.seconds, delay.nanos) == (2, 500_000_000)
    status = Status.FromString(found["grpc-status-details-bin"])
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert grpc_status(errors.InvalidRequest("bad"))[2] == ()
