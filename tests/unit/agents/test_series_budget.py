"""The series budget per agent (docs/agents.md, "Series per agent"), measured.

Real instruments fed as in production, read through an InMemoryMetricReader and counted
as the Collector's prometheus exporter exposes them (`prometheus_series`), with
`target_info` and the gateway's two last-seen series:

- a connector: a real gRPC channel through the library's interceptors to an in-process
  server that fails calls with more error codes than the budget has room for;
- a data agent: the run tracker that `otel_agents.prefect` installs into Prefect's
  engines, fed the state changes the engines report for F flows of T tasks, each flow
  completed, failed, crashed and cancelled (every series a flow can have);
  tests/unit/agents/test_prefect.py counts real Prefect flows the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.metrics import Histogram
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation
from prometheus_series import (
    collected_series,
    connector_formula,
    data_agent_formula,
    names,
)

from otel_agents import connector_metrics, setup_metrics
from otel_agents.connector import ERROR_TYPES, error_type_of
from otel_agents.etl import EtlMetrics, etl_metrics
from otel_agents.grpc_instrumentation import instrument_channel
from otel_agents.names import CONTRACT as LIBRARY_CONTRACT
from otel_agents.prefect.sink import MetricsSink
from otel_agents.prefect.tracker import RunTracker
from stack.pki import Authority

CONNECTOR_BUDGET = 12
DATA_AGENT_BUDGET = 150
"""For 20 flows of 5 tasks, task detail off (the default)."""

CONNECTOR_CONTRACT = {
    m.prometheus for m in LIBRARY_CONTRACT if m.prometheus.startswith("connector_")
} | {"connector_last_seen_seconds"}
DATA_AGENT_CONTRACT = {
    m.prometheus
    for m in LIBRARY_CONTRACT
    if m.prometheus.startswith("agent_") and m.kind != "histogram"
}

# -- connector -------------------------------------------------------------------------

UPSTREAM = "/budget.Upstream/Send"
CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INTERNAL,
)


def _send(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Answers OK, or fails with the status code named in the request."""
    if request.startswith(b"FAIL "):
        context.abort(grpc.StatusCode[request[5:].decode()], "as asked")
    return b"ok"


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
    handler = grpc.unary_unary_rpc_method_handler(_send)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("budget.Upstream", {"Send": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.mark.parametrize("failing_codes", [0, 1, 2, len(CODES)])
def test_a_connector_stays_within_its_budget_whatever_fails(
    upstream: str, tmp_path: Path, failing_codes: int
) -> None:
    reader = InMemoryMetricReader()
    telemetry = setup_metrics(
        "budget-connector", "connector", environ={}, reader=reader, set_global=False
    )
    certificate = Authority(tmp_path).cert_file
    metrics = connector_metrics(telemetry, certificate_path=certificate)
    channel = grpc.insecure_channel(upstream)
    call = instrument_channel(channel, metrics, records_of=None).unary_unary(UPSTREAM, None, None)
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        for _ in range(3):
            assert call(b"rows", timeout=10) == b"ok"
        for code in CODES[:failing_codes]:
            for _ in range(2):
                with pytest.raises(grpc.RpcError):
                    call(b"FAIL " + code.name.encode(), timeout=10)
        metrics.record_batch(rows=100, nbytes=4096)
        metrics.set_connected(True)
        series = collected_series(reader)
    finally:
        channel.close()
        telemetry.shutdown()

    kinds = {error_type_of(code.name) for code in CODES[:failing_codes]}
    assert len(series) == connector_formula(len(kinds)) <= CONNECTOR_BUDGET
    if failing_codes:
        assert names(series) >= CONNECTOR_CONTRACT
    errors = {dict(labels)["error_type"] for name, labels in series if "errors" in name}
    assert errors == kinds <= set(ERROR_TYPES)


# -- data agent ------------------------------------------------------------------------


def run_flows(tracker: RunTracker, flows: int, tasks_per_flow: int) -> None:
    """Each flow completes (its first task after a retry), fails (its first task fails),
    crashes and is cancelled, with the state changes Prefect's engines report."""
    run = 0

    def run_id() -> str:
        nonlocal run
        run += 1
        return f"run-{run}"

    for f in range(flows):
        flow = f"flow-{f}"
        tasks = [f"task-{t}" for t in range(tasks_per_flow)]
        completed = run_id()
        tracker.flow_state(completed, flow, "PENDING")
        tracker.flow_state(completed, flow, "RUNNING")
        for t, task in enumerate(tasks):
            task_run = run_id()
            attempts = 2 if t == 0 else 1
            for attempt in range(1, attempts + 1):
                tracker.task_state(task_run, task, flow, "RUNNING", attempt)
            tracker.task_state(task_run, task, flow, "COMPLETED", attempts)
            tracker.task_state(task_run, task, flow, "COMPLETED", attempts)  # dispatched twice
        tracker.flow_state(completed, flow, "COMPLETED")

        failed = run_id()
        tracker.flow_state(failed, flow, "RUNNING")
        task_run = run_id()
        tracker.task_state(task_run, tasks[0], flow, "RUNNING", 1)
        tracker.task_state(task_run, tasks[0], flow, "FAILED", 1)
        tracker.flow_state(failed, flow, "FAILED")

        crashed = run_id()
        tracker.flow_state(crashed, flow, "RUNNING")
        tracker.flow_state(crashed, flow, "CRASHED")
        cancelled = run_id()
        tracker.flow_state(cancelled, flow, "RUNNING")
        tracker.flow_state(cancelled, flow, "CANCELLED")


def measure(
    flows: int, tasks_per_flow: int, environ: dict[str, str], reader: InMemoryMetricReader
) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    telemetry = setup_metrics("budget-etl", "etl", environ=environ, reader=reader, set_global=False)
    try:
        metrics = etl_metrics(telemetry)
        metrics.status.set_connected(True)
        run_flows(RunTracker(MetricsSink(lambda: metrics)), flows, tasks_per_flow)
        return collected_series(reader)
    finally:
        telemetry.shutdown()


@pytest.mark.parametrize(("flows", "tasks_per_flow"), [(1, 1), (3, 2), (10, 10), (20, 5), (32, 5)])
def test_a_data_agent_makes_4_series_per_flow_plus_21(flows: int, tasks_per_flow: int) -> None:
    series = measure(flows, tasks_per_flow, {}, InMemoryMetricReader())
    assert len(series) == data_agent_formula(flows, tasks_per_flow, task_detail=False)
    assert len(series) == 4 * flows + 21
    if (flows, tasks_per_flow) == (20, 5):
        assert len(series) == 101 <= DATA_AGENT_BUDGET
    assert len(series) <= DATA_AGENT_BUDGET  # up to 32 flows
    assert DATA_AGENT_CONTRACT | {"agent_last_seen_seconds"} <= names(series)
    last = {dict(labels)["flow"] for name, labels in series if "last_flow" in name}
    assert last == {f"flow-{f}" for f in range(flows)}
    # What the per-flow failure alert needs, and no state or task label anywhere.
    for name in ("agent_flows_executed_total", "agent_flows_failed_total"):
        assert {dict(labels)["flow"] for n, labels in series if n == name} == last
    labels = {key for _, attributes in series for key, _ in attributes}
    assert labels == {"instance", "flow", "le"}


@pytest.mark.parametrize(("flows", "tasks_per_flow"), [(1, 1), (3, 2), (20, 5)])
def test_task_detail_adds_3_series_per_task_of_each_flow(flows: int, tasks_per_flow: int) -> None:
    environ = {"OTEL_AGENTS_TASK_DETAIL": "true"}
    series = measure(flows, tasks_per_flow, environ, InMemoryMetricReader())
    assert len(series) == data_agent_formula(flows, tasks_per_flow, task_detail=True)
    assert len(series) == 4 * flows + 3 * flows * tasks_per_flow + 18
    tasks = {
        (dict(labels)["flow"], dict(labels)["task"])
        for name, labels in series
        if name == "agent_tasks_executed_total"
    }
    assert len(tasks) == flows * tasks_per_flow
    if (flows, tasks_per_flow) == (20, 5):
        assert len(series) == 398


def test_an_exponential_histogram_is_3_series_in_prometheus() -> None:
    # What OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION=
    # base2_exponential_bucket_histogram asks of the exporter, asked of the reader here.
    reader = InMemoryMetricReader(
        preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()}
    )
    series = measure(20, 5, {}, reader)
    assert len(series) == data_agent_formula(20, 5, task_detail=False, histogram_buckets=0)
    buckets = {dict(labels)["le"] for name, labels in series if name.endswith("_bucket")}
    assert buckets == {"+Inf"}


def test_the_counts_are_the_runs_and_tasks_of_every_flow() -> None:
    reader = InMemoryMetricReader()
    telemetry = setup_metrics("budget-etl", "etl", environ={}, reader=reader, set_global=False)
    metrics = EtlMetrics(telemetry.meter)
    run_flows(RunTracker(MetricsSink(lambda: metrics)), 2, 3)
    data = reader.get_metrics_data()
    telemetry.shutdown()
    assert data is not None
    values = {
        (metric.name, tuple(sorted((point.attributes or {}).items()))): getattr(
            point, "value", getattr(point, "count", None)
        )
        for metric in data.resource_metrics[0].scope_metrics[0].metrics
        for point in metric.data.data_points
    }
    for flow in ("flow-0", "flow-1"):
        key = (("flow", flow),)
        assert values[("agent.flows_executed", key)] == 4
        assert values[("agent.flows_success", key)] == 1
        assert values[("agent.flows_failed", key)] == 2  # failed and crashed
    assert values[("agent.tasks_executed", ())] == 2 * (3 + 1)
    assert values[("agent.tasks_failed", ())] == 2
    assert values[("agent.task_retries", ())] == 2
    assert values[("agent.flow.duration", ())] == 8
