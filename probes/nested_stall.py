"""Longest event-loop hold for one request of deeply nested or wide AnyValue attributes.

Run: PYTHONPATH=$PWD .venv/bin/python probes/nested_stall.py
Uses the unit tests' Ticker (tests/unit/gateway/test_loop_stalls.py) against the real HTTP app.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests/unit"), str(ROOT / "tests/unit/gateway")]

from gateway_fixtures import run  # noqa: E402
from gateway_http_fixtures import http_gateway  # noqa: E402
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (  # noqa: E402
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue  # noqa: E402
from test_loop_stalls import PROTOBUF, post, ticking  # noqa: E402

from bench import isolation_attacks as attacks  # noqa: E402


def body(depth: int, width: int, where: str) -> bytes:
    value = AnyValue(string_value="x")
    for _ in range(depth):
        value = AnyValue(array_value=ArrayValue(values=[value]))
    wide = AnyValue(array_value=ArrayValue(values=[value] * width))
    metric = attacks._gauge("a.nested", 1.0)
    resource = {"service.name": "a", "service.instance.id": "a-1"}
    request = attacks._request(resource, [metric])
    if where == "point":
        metric = request.resource_metrics[0].scope_metrics[0].metrics[0]
        metric.gauge.data_points[0].attributes.append(KeyValue(key="deep", value=wide))
    elif where == "resource":
        request.resource_metrics[0].resource.attributes.append(KeyValue(key="deep", value=wide))
    else:
        request.resource_metrics[0].scope_metrics[0].scope.attributes.append(
            KeyValue(key="deep", value=wide)
        )
    return request.SerializeToString()


async def one(tmp: Path, depth: int, width: int, where: str) -> None:
    raw = body(depth, width, where)
    async with http_gateway(tmp) as http, ticking() as ticker:
        answer = await post(http, "acme", raw, PROTOBUF)
    detail = answer.text[:160]
    if answer.status_code == 200:
        partial = ExportMetricsServiceResponse.FromString(answer.content).partial_success
        detail = f"rejected {partial.rejected_data_points}: {partial.error_message[:120]}"
    print(
        f"{where:8} depth {depth:3} width {width:6} ({len(raw) / 1e6:.2f} MB): "
        f"{answer.status_code} {detail}; loop hold {ticker.longest * 1000:.0f} ms CPU "
        f"(wall {ticker.longest_wall * 1000:.0f})",
        flush=True,
    )


if __name__ == "__main__":
    for depth, width in ((40, 5_000), (40, 40_000), (1, 1_000_000), (45, 1)):
        for where in ("point", "resource", "scope"):
            with tempfile.TemporaryDirectory() as tmp:
                run(one(Path(tmp), depth, width, where))
