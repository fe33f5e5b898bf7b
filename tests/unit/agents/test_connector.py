"""ConnectorMetrics and the Arrow helpers: names, units, exact totals, never raising."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import grpc
import pyarrow as pa  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    InMemoryMetricReader,
    Sum,
)

from otel_agents import AgentTelemetry, connector_metrics, setup_metrics
from otel_agents.arrow import count_record_batch, ipc_row_count
from otel_agents.connector import ERROR_TYPES, ConnectorMetrics, error_type_of

Points = dict[str, dict[frozenset[tuple[str, object]], float]]


@pytest.fixture
def telemetry() -> Iterator[tuple[AgentTelemetry, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    t = setup_metrics("orders-sync", "connector", environ={}, reader=reader, set_global=False)
    yield t, reader
    t.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[str, tuple[str | None, Sum | Gauge]]:
    data = reader.get_metrics_data()
    assert data is not None
    [scope] = data.resource_metrics[0].scope_metrics
    found = {}
    for metric in scope.metrics:
        assert isinstance(metric.data, Sum | Gauge)
        found[metric.name] = (metric.unit, metric.data)
    return found


def points(reader: InMemoryMetricReader) -> Points:
    return {
        name: {frozenset((p.attributes or {}).items()): p.value for p in data.data_points}
        for name, (_, data) in collect(reader).items()
    }


def test_every_instrument_with_its_unit_kind_and_no_attributes(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    metrics = connector_metrics(t)
    metrics.record_batch(10, 2048)
    metrics.record_query()
    metrics.set_connected(True)

    found = collect(reader)
    kinds = {name: (unit, type(data).__name__) for name, (unit, data) in found.items()}
    assert kinds == {
        "connector.bytes_sent": ("By", "Sum"),
        "connector.records_sent": ("{record}", "Sum"),
        "connector.queries_processed": ("{query}", "Sum"),
        "connector.uptime": ("s", "Gauge"),
        "connector.connected": ("", "Gauge"),
    }
    for name, (_, data) in found.items():
        if isinstance(data, Sum):
            assert data.is_monotonic, name
            assert data.aggregation_temporality is AggregationTemporality.CUMULATIVE
    values = points(reader)
    assert values["connector.bytes_sent"] == {frozenset(): 2048}
    assert values["connector.connected"] == {frozenset(): 1}


def test_totals_are_exact_and_cumulative_across_collections(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    metrics = connector_metrics(t)
    assert points(reader)["connector.records_sent"] == {frozenset(): 0}  # series from the start
    assert "connector.errors" not in points(reader)  # no error type is known yet

    metrics.record_batch(10, 2048)
    metrics.record_batch(5, 1000)
    for _ in range(3):
        metrics.record_query()
    metrics.record_error("UNAVAILABLE")
    metrics.record_error("UNAVAILABLE")
    metrics.record_error(TimeoutError("no answer from 10.0.0.7"))
    first = points(reader)
    metrics.record_batch(1, 1)

    assert first["connector.records_sent"] == {frozenset(): 15}
    assert first["connector.bytes_sent"] == {frozenset(): 3048}
    assert first["connector.queries_processed"] == {frozenset(): 3}
    assert first["connector.errors"] == {frozenset({("error_type", "unavailable")}): 3}
    assert points(reader)["connector.records_sent"] == {frozenset(): 16}


def test_counts_from_many_threads_are_exact(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    metrics = connector_metrics(t)
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        for _ in range(25_000):
            metrics.record_batch(3, 7)
            metrics.record_query()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    values = points(reader)
    assert values["connector.records_sent"] == {frozenset(): 300_000}
    assert values["connector.bytes_sent"] == {frozenset(): 700_000}
    assert values["connector.queries_processed"] == {frozenset(): 100_000}


def test_one_instance_per_telemetry_and_later_options_are_ignored_with_a_warning(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader], caplog: pytest.LogCaptureFixture
) -> None:
    t, reader = telemetry
    first = connector_metrics(t, certificate_path="/first.pem")
    assert connector_metrics(t) is first
    assert connector_metrics(t, version="2.0") is first  # accepted, never a series
    assert not caplog.records
    assert connector_metrics(t, certificate_path="/other.pem") is first
    assert "already called" in caplog.text
    first.record_batch(1, 10)
    connector_metrics(t).record_batch(1, 10)
    assert points(reader)["connector.records_sent"] == {frozenset(): 2}


@pytest.mark.timeout(30)
def test_a_fork_while_another_thread_counts_does_not_deadlock_the_child(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader],
) -> None:
    t, _ = telemetry
    metrics = connector_metrics(t)
    with metrics._lock:  # as if another thread were counting at the moment of the fork
        pid = os.fork()
        if pid == 0:  # the child: counting must not wait for a lock nobody will release
            metrics.record_batch(1, 1)
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_bad_values_are_ignored_with_one_warning(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader], caplog: pytest.LogCaptureFixture
) -> None:
    t, reader = telemetry
    metrics = connector_metrics(t)
    metrics.record_batch(-1, 10)
    metrics.record_batch(None, 10)  # type: ignore[arg-type]
    metrics.record_batch(2, 20)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert points(reader)["connector.bytes_sent"] == {frozenset(): 20}


def test_every_error_is_one_of_three_kinds_whatever_its_code(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    metrics = connector_metrics(t)
    codes = [code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK]
    for name in [*codes, "SomethingElse", *ERROR_TYPES]:
        metrics.record_error(name)
    # Each error_type is a series of every connector: a fixed three keeps the budget.
    assert points(reader)["connector.errors"] == {
        frozenset({("error_type", "unavailable")}): 5 + 1,
        frozenset({("error_type", "rejected")}): 8 + 1,
        frozenset({("error_type", "failed")}): 3 + 1 + 1,
    }


def test_error_type_of_reads_a_grpc_status_code_else_the_exception() -> None:
    class FakeRpcError(Exception):
        def code(self) -> object:
            return type("Code", (), {"name": "DEADLINE_EXCEEDED"})()

    class OddCode(Exception):
        def code(self) -> int:
            raise RuntimeError("not a status")

    assert error_type_of(FakeRpcError()) == "unavailable"
    assert error_type_of(OddCode()) == "failed"
    assert error_type_of(ConnectionResetError()) == "unavailable"
    assert error_type_of(TimeoutError()) == "unavailable"
    assert error_type_of(ValueError()) == "failed"


def test_disabled_telemetry_accepts_every_call() -> None:
    metrics = connector_metrics(AgentTelemetry.disabled(), certificate_path="/nonexistent.pem")
    metrics.record_batch(1, 1)
    metrics.record_query()
    metrics.record_error("UNAVAILABLE")
    metrics.set_connected(False)


# -- Arrow --------------------------------------------------------------------------------


def arrow_batch(rows: int) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "id": pa.array(range(rows), pa.int64()),
            "name": pa.array([f"n{i}" for i in range(rows)], pa.string()),
        }
    )


def ipc_stream(*batches: pa.RecordBatch, options: object = None) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batches[0].schema, options=options) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def test_count_record_batch_reads_batches_tables_and_ipc_payloads(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    metrics = connector_metrics(t)
    batch = arrow_batch(100)
    payload = ipc_stream(arrow_batch(30), arrow_batch(12))

    count_record_batch(metrics, batch)
    count_record_batch(metrics, pa.Table.from_batches([arrow_batch(7)]))
    count_record_batch(metrics, payload)
    count_record_batch(metrics, pa.py_buffer(payload))

    values = points(reader)
    assert values["connector.records_sent"] == {frozenset(): 100 + 7 + 42 + 42}
    table_bytes = pa.Table.from_batches([arrow_batch(7)]).nbytes
    expected_bytes = batch.nbytes + table_bytes + 2 * len(payload)
    assert values["connector.bytes_sent"] == {frozenset(): expected_bytes}
    assert ipc_row_count(memoryview(payload)) == 42


def test_an_unreadable_payload_counts_its_bytes_and_logs_once(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader], caplog: pytest.LogCaptureFixture
) -> None:
    t, reader = telemetry
    metrics = connector_metrics(t)
    count_record_batch(metrics, b"not arrow")
    count_record_batch(metrics, b"still not arrow")  # not logged again
    count_record_batch(metrics, object())  # type: ignore[arg-type]
    values = points(reader)
    assert values["connector.bytes_sent"] == {frozenset(): 9 + 15}
    assert values["connector.records_sent"] == {frozenset(): 0}
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


def test_ipc_row_count_agrees_with_pyarrow_on_every_stream_shape() -> None:
    empty = arrow_batch(0)
    dictionary = pa.record_batch({"s": pa.array(["a", "b", "a"] * 5).dictionary_encode()})
    compressed = pa.ipc.IpcWriteOptions(compression="zstd")
    legacy = pa.ipc.IpcWriteOptions(use_legacy_format=True)
    payloads = [
        ipc_stream(arrow_batch(1000)),
        ipc_stream(arrow_batch(3), empty, arrow_batch(4)),
        ipc_stream(empty),
        ipc_stream(dictionary, dictionary),  # dictionary batches are not rows
        ipc_stream(arrow_batch(17), options=compressed),
        ipc_stream(arrow_batch(9), options=legacy),  # no continuation markers
    ]
    for payload in payloads:
        expected = sum(batch.num_rows for batch in pa.ipc.open_stream(payload))
        assert ipc_row_count(payload) == expected
    assert ipc_row_count(ipc_stream(arrow_batch(5))[:-8]) == 5  # no end-of-stream marker


@pytest.mark.parametrize(
    "payload",
    [b"not arrow", b"\xff\xff\xff\xff\x10\x00\x00\x00", b"\xff\xff\xff\xff\xf0\xff\xff\xff"],
)
def test_ipc_row_count_refuses_what_is_not_an_ipc_stream(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not an Arrow IPC stream"):
        ipc_row_count(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_ipc_row_count_gives_a_count_or_value_error_for_any_bytes(payload: bytes) -> None:
    with contextlib.suppress(ValueError):
        assert ipc_row_count(payload) >= 0


def test_ipc_row_count_on_every_truncation_of_a_stream() -> None:
    payload = ipc_stream(arrow_batch(3), arrow_batch(2))
    for cut in range(len(payload) + 1):
        with contextlib.suppress(ValueError):
            assert ipc_row_count(payload[:cut]) in (0, 3, 5)


def test_counting_needs_no_pyarrow(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader], monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = ipc_stream(arrow_batch(12))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # any `import pyarrow` now fails
    t, reader = telemetry
    count_record_batch(connector_metrics(t), payload)
    assert points(reader)["connector.records_sent"] == {frozenset(): 12}


def test_importing_the_library_imports_neither_pyarrow_nor_grpc() -> None:
    code = (
        "import sys, otel_agents, otel_agents.arrow, otel_agents.certificate; "
        "print(sorted(m for m in ('pyarrow', 'grpc') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_direct_construction_keeps_the_old_signature() -> None:
    reader = InMemoryMetricReader()
    t = setup_metrics("legacy", "connector", environ={}, reader=reader, set_global=False)
    ConnectorMetrics(t.meter).record_batch(rows=3, nbytes=30)
    assert points(reader)["connector.bytes_sent"] == {frozenset(): 30}
    t.shutdown()
