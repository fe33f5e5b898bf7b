"""Shapes and names one tenant could hurt the others with, through the real gateway
(gRPC, and OTLP/HTTP JSON once).

Each request carries a hostile item and a good one: the hostile item is refused
in `partial_success`, named, counted under its reason, and the good data points of
the same request reach the (fake) Collector.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from gateway_fixtures import FakeCollector, fake_collector, make_tenants
from gateway_fixtures import running_gateway as gateway
from gateway_http_fixtures import http_gateway
from google.protobuf import json_format
from middle import sample
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m

GOOD = "app.jobs.done"


def _kvs(attributes: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes.items()]


def _counter(name: str = GOOD, unit: str = "{job}", value: int = 3) -> m.Metric:
    point = m.NumberDataPoint(as_int=value, time_unix_nano=1)
    return m.Metric(
        name=name,
        unit=unit,
        sum=m.Sum(data_points=[point], is_monotonic=True, aggregation_temporality=2),
    )


def _gauge(name: str, unit: str = "", value: float = 1.0) -> m.Metric:
    point = m.NumberDataPoint(as_double=value, time_unix_nano=1)
    return m.Metric(name=name, unit=unit, gauge=m.Gauge(data_points=[point]))


def _histogram(name: str, unit: str = "s") -> m.Metric:
    point = m.HistogramDataPoint(count=1, sum=1.0, explicit_bounds=[1.0], bucket_counts=[1, 0])
    return m.Metric(
        name=name,
        unit=unit,
        histogram=m.Histogram(data_points=[point], aggregation_temporality=2),
    )


def _resource(
    metrics: Sequence[m.Metric],
    attributes: dict[str, str] | None = None,
    instance: str = "agent-1",
) -> m.ResourceMetrics:
    resource = m.ResourceMetrics(scope_metrics=[m.ScopeMetrics(metrics=metrics)])
    base = {"service.name": "app", "service.instance.id": instance}
    resource.resource.attributes.extend(_kvs({**base, **(attributes or {})}))
    return resource


def _request(*resources: m.ResourceMetrics) -> bytes:
    return ExportMetricsServiceRequest(resource_metrics=resources).SerializeToString()


def _names(collector: FakeCollector) -> list[str]:
    """The metric names the Collector received, in order."""
    return [
        metric.name
        for request in collector.received
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.WhichOneof("data") and len(getattr(metric, metric.WhichOneof("data")).data_points)
    ]


def _refused(response: ExportMetricsServiceResponse, reason: str, points: int = 1) -> str:
    """The partial_success message, once it is checked to refuse `points` for `reason`."""
    partial = response.partial_success
    assert partial.rejected_data_points == points, partial.error_message
    assert f"{reason}: {points} (" in partial.error_message, partial.error_message
    return partial.error_message


def test_a_tenant_cannot_send_a_contract_counter_as_a_gauge(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "alpha", "beta")

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port) as gw,
        ):
            # alpha tries to claim connector_errors_total as a gauge; its good
            # counter in the same request goes through.
            forged = _gauge("connector.errors_total")
            response = await gw.export(_request(_resource([forged, _counter()])), keys["alpha"])
            message = _refused(response, "metric_type_conflict")
            assert "'connector.errors_total' is a counter of otel_agents' metrics" in message
            assert "send connector.errors as a counter with unit '{error}'" in message
            # The contract's name with another unit, or as an up-down counter.
            for wrong in (_counter("connector.errors", unit="By"), _counter("connector.errors")):
                wrong.sum.is_monotonic = wrong.unit == "By"
                response = await gw.export(_request(_resource([wrong])), keys["alpha"])
                _refused(response, "metric_type_conflict")
            assert _names(collector) == [GOOD]
            # beta's real counter is not affected.
            real = _counter("connector.errors", unit="{error}")
            response = await gw.export(_request(_resource([real])), keys["beta"])
            assert not response.HasField("partial_success")
            assert _names(collector) == [GOOD, "connector.errors"]
            registry = gw.gateway.telemetry.registry
            labels = {"tenant_id": "alpha", "reason": "metric_type_conflict"}
            assert sample(registry, "gateway_rejections_total", **labels) == 3
            assert sample(registry, "gateway_data_points_total", outcome="rejected", **labels) == 3

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "metric",
    [
        _histogram("agent.last_seen"),
        _histogram("connector.last_seen.timestamp"),
        _gauge("Connector-Last_Seen", unit="s"),
        _gauge("gateway.fleet.agents"),
        _gauge("up", unit="1"),
        _gauge("UP"),
        _gauge("target", unit="info"),
        _gauge("scrape.samples_scraped"),
        _gauge("app__shadow"),
        _gauge("ALERTS"),
        _gauge("tenant_instance:agent_running:timestamp"),  # a recording rule's
    ],
    ids=lambda metric: f"{metric.name}[{metric.unit}]",
)
def test_the_platforms_own_names_are_refused_in_any_spelling(
    tmp_path: Path, metric: m.Metric
) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "alpha")

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            # Whatever the name patterns allow.
            gateway(tmp_path / "tenants.json", port, metric_name_patterns=(".*",)) as gw,
        ):
            response = await gw.export(_request(_resource([metric, _counter()])), keys["alpha"])
            message = _refused(response, "metric_name_reserved")
            assert f"metric {metric.name!r}" in message
            assert _names(collector) == [GOOD]

    asyncio.run(scenario())


def test_a_custom_name_keeps_the_type_and_unit_it_was_first_seen_with(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "alpha", "beta")

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port) as gw,
        ):
            first = _request(_resource([_counter("app.queue.depth", unit="")]))
            assert not (await gw.export(first, keys["beta"])).HasField("partial_success")
            # alpha's gauge would become app_queue_depth_total too: refused, named.
            clash = _gauge("app.queue.depth.total")
            response = await gw.export(_request(_resource([clash, _counter()])), keys["alpha"])
            message = _refused(response, "metric_type_conflict")
            assert "becomes app_queue_depth_total, in use as a counter" in message
            assert "use another name" in message
            # Another unit under the same Prometheus name: refused too.
            other_unit = _counter("app.queue.depth", unit="{item}")
            response = await gw.export(_request(_resource([other_unit])), keys["alpha"])
            _refused(response, "metric_type_conflict")
            # The same kind and unit is shared, by any tenant.
            again = _request(_resource([_counter("app.queue.depth", unit="")]))
            assert not (await gw.export(again, keys["alpha"])).HasField("partial_success")
            assert _names(collector) == ["app.queue.depth", GOOD, "app.queue.depth"]

    asyncio.run(scenario())


def test_a_histogram_cannot_hide_another_tenants_count_series(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "alpha", "beta")

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port) as gw,
        ):
            beta = _request(_resource([_gauge("app.batch.count")]))
            assert not (await gw.export(beta, keys["beta"])).HasField("partial_success")
            alpha = _request(_resource([_histogram("app.batch", unit=""), _counter()]))
            message = _refused(await gw.export(alpha, keys["alpha"]), "metric_type_conflict")
            assert "clashes with the gauge app_batch_count" in message
            assert _names(collector) == ["app.batch.count", GOOD]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("attributes", "detail"),
    [
        ({".": "x"}, "makes no Prometheus label name"),
        ({"-": "x"}, "makes no Prometheus label name"),
        ({"\uff48\uff4f\uff53\uff54": "x"}, "makes no Prometheus label name"),  # fullwidth
        ({"__name__": "x"}, "becomes the reserved label '__name__'"),
        ({"job": "x"}, "becomes the reserved label 'job'"),
        ({"le": "x"}, "becomes the reserved label 'le'"),
        ({"host.name": "a", "host_name": "b"}, "both become label 'host_name'"),
        ({"k" * 129: "x"}, "limit max_attribute_key_length=128"),
    ],
    ids=["dot", "dash", "fullwidth", "__name__", "job", "le", "clash", "long-key"],
)
def test_resource_keys_must_make_valid_distinct_labels(
    tmp_path: Path, attributes: dict[str, str], detail: str
) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "alpha")
    bad = _resource([_counter("app.bad"), _gauge("app.level")], attributes, instance="bad")

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port) as gw,
        ):
            response = await gw.export(_request(bad, _resource([_counter()])), keys["alpha"])
            message = _refused(response, "attribute_key_not_allowed", points=2)
            assert "resource attribute key" in message
            assert detail in message
            [received] = collector.received
            assert len(received.resource_metrics) == 1
            assert _names(collector) == [GOOD]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("key", "detail"),
    [
        (".", "makes no Prometheus label name"),
        ("\uff58", "makes no Prometheus label name"),
        ("1st", None),  # key_1st: a valid label
        ("quantile", "becomes the reserved label 'quantile'"),
    ],
)
def test_point_keys_must_make_valid_labels_whatever_the_patterns(
    tmp_path: Path, key: str, detail: str | None
) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "alpha")
    point = _counter("app.odd")
    point.sum.data_points[0].attributes.extend(_kvs({key: "x"}))

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port, attribute_key_patterns=(".*",)) as gw,
        ):
            response = await gw.export(_request(_resource([point, _counter()])), keys["alpha"])
            if detail is None:
                assert not response.HasField("partial_success")
                assert _names(collector) == ["app.odd", GOOD]
            else:
                assert detail in _refused(response, "attribute_key_not_allowed")
                assert _names(collector) == [GOOD]

    asyncio.run(scenario())


def test_a_huge_resource_is_refused_and_the_rest_of_its_request_forwarded(
    tmp_path: Path,
) -> None:
    """A 7.2 MB resource of 28,000 attributes with one point: refused before its
    attributes are walked; the small resource beside it goes through."""
    keys = make_tenants(tmp_path / "tenants.json", "alpha")
    huge = _resource([_counter("app.bloat")], {f"k{i}": "v" * 250 for i in range(28_000)})
    body = _request(huge, _resource([_counter()]))
    assert len(body) > 7_200_000

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port) as gw,
        ):
            started = time.perf_counter()
            response = await gw.export(body, keys["alpha"])
            elapsed = time.perf_counter() - started
            message = _refused(response, "resource_limit")
            assert "the resource has 28002 attributes, limit max_resource_attributes=64" in message
            [received] = collector.received
            assert received.ByteSize() < 1000
            assert _names(collector) == [GOOD]
            # Parsing 7 MB dominates; the refusal itself walks nothing.
            assert elapsed < 5.0

    asyncio.run(scenario())


def test_a_resource_over_its_size_is_refused_even_without_points(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "alpha")
    big = _resource([], {f"k{i}": "v" * 200 for i in range(50)})

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port) as gw,
        ):
            response = await gw.export(_request(big, _resource([_counter()])), keys["alpha"])
            message = _refused(response, "resource_limit", points=0)
            assert "limit max_resource_bytes=8192" in message
            [received] = collector.received
            assert len(received.resource_metrics) == 1
            assert _names(collector) == [GOOD]

    asyncio.run(scenario())


def test_a_scope_over_its_attribute_limit_is_refused_with_its_points(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "alpha")
    resource = _resource([_counter()])
    crowded = m.ScopeMetrics(metrics=[_counter("app.crowded"), _gauge("app.crowded.level")])
    crowded.scope.attributes.extend(_kvs({f"k{i}": "v" for i in range(17)}))
    resource.scope_metrics.append(crowded)

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port) as gw,
        ):
            response = await gw.export(_request(resource), keys["alpha"])
            message = _refused(response, "attribute_limit", points=2)
            assert "17 attributes on an instrumentation scope" in message
            [received] = collector.received
            assert len(received.resource_metrics[0].scope_metrics) == 1
            assert _names(collector) == [GOOD]

    asyncio.run(scenario())


def test_long_resource_values_are_refused(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "alpha")
    long_value = _resource([_counter("app.long")], {"deployment.note": "x" * 257}, "long")

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port) as gw,
        ):
            response = await gw.export(_request(long_value, _resource([_counter()])), keys["alpha"])
            message = _refused(response, "attribute_value_too_long")
            assert "resource attribute 'deployment.note'" in message
            assert _names(collector) == [GOOD]

    asyncio.run(scenario())


def test_one_tenant_cannot_fill_the_table_of_names(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "alpha", "beta")
    flood = [_gauge(f"app.flood{index}") for index in range(5)]

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port, max_metric_names=3) as gw,
        ):
            response = await gw.export(_request(_resource(flood)), keys["alpha"])
            message = _refused(response, "metric_name_limit", points=2)
            assert "metric 'app.flood3': tenant 'alpha' has 3 metric names in use" in message
            # beta brings its own names, and uses alpha's.
            beta = _request(_resource([_gauge("app.beta"), _gauge("app.flood0")]))
            assert not (await gw.export(beta, keys["beta"])).HasField("partial_success")
            kept = ["app.flood0", "app.flood1", "app.flood2"]
            assert _names(collector) == [*kept, "app.beta", "app.flood0"]

    asyncio.run(scenario())


def test_over_otlp_http_json_the_same_refusals_answer_in_partial_success(tmp_path: Path) -> None:
    request = ExportMetricsServiceRequest(
        resource_metrics=[
            _resource([_gauge("connector.connected", value=1.0)], {"-": "x"}, "dash"),
            _resource([_gauge("connector.errors_total"), _counter()]),
        ]
    )
    body = json_format.MessageToJson(request)

    async def scenario() -> None:
        async with http_gateway(tmp_path) as gw:
            headers = {"content-type": "application/json", **gw.auth("acme")}
            answer = await gw.client.post("/v1/metrics", content=body, headers=headers)
            assert answer.status_code == 200
            partial = answer.json()["partialSuccess"]
            assert partial["rejectedDataPoints"] == "2"
            assert (
                "attribute_key_not_allowed: 1 (resource attribute key '-'"
                in (partial["errorMessage"])
            )
            assert (
                "metric_type_conflict: 1 (metric 'connector.errors_total'"
                in (partial["errorMessage"])
            )
            assert _names(gw.collector) == [GOOD]

    asyncio.run(scenario())


def test_a_scope_key_cannot_repeat_the_exporters_own_scope_labels(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "alpha")
    resource = _resource([_counter()])
    scope = m.ScopeMetrics(metrics=[_counter("app.scoped")])
    # otel_scope_schema_url is the exporter's own label; `schema_url` itself it skips.
    scope.scope.attributes.extend(_kvs({"schema.url": "x"}))
    resource.scope_metrics.append(scope)

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port, attribute_key_patterns=(".*",)) as gw,
        ):
            response = await gw.export(_request(resource), keys["alpha"])
            message = _refused(response, "attribute_key_not_allowed")
            assert "becomes the exporter's own otel_scope_schema_url label" in message
            assert _names(collector) == [GOOD]

    asyncio.run(scenario())
