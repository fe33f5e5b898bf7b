"""A clean stop exports the final values and says "stopped"; a crash or a kill does not.

Each case is a real Python process set up with `setup_metrics`, exporting over
OTLP/gRPC to an in-process receiver, ended the way the case says.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from otlp_receiver import OtlpReceiver, otlp_receiver

from otel_agents.lifecycle import STATE_KEY, StopAnnouncingExporter
from stack.local import default_sigint

REPO = Path(__file__).resolve().parents[3]

# Counts 5 records, says it is ready, then ends as argv[1] asks.
AGENT = textwrap.dedent(
    """
    import os, signal, sys, time
    from otel_agents import connector_metrics, setup_metrics

    telemetry = setup_metrics("lifecycle-agent", "connector")
    connector_metrics(telemetry).record_batch(5, 500)
    if sys.argv[1] == "own-handler":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    if sys.argv[1] == "raise":
        raise RuntimeError("a bug")
    if sys.argv[1] == "exit":
        sys.exit(0)
    time.sleep(60)
    """
)


def _start(endpoint: str, how: str, **env: str) -> subprocess.Popen[str]:
    environ = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_AGENTS_API_KEY": "test-key",
        # No periodic export during the test: only the final one can carry the totals.
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-c", AGENT, how],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready", process.stderr.read()  # type: ignore[union-attr]
    return process


def _exports(receiver: OtlpReceiver) -> list[tuple[dict[str, str], float]]:
    """(resource attributes, records sent) of each export."""
    found = []
    for request in receiver.requests:
        for resource in request.resource_metrics:
            attributes = {kv.key: kv.value.string_value for kv in resource.resource.attributes}
            records = [
                point.as_int
                for scope in resource.scope_metrics
                for metric in scope.metrics
                if metric.name == "connector.records_sent"
                for point in metric.sum.data_points
            ]
            found.append((attributes, float(sum(records))))
    return found


@pytest.mark.parametrize(
    ("how", "signum", "exit_status", "stopped"),
    [
        ("exit", None, 0, True),
        ("sleep", signal.SIGTERM, -signal.SIGTERM, True),
        ("sleep", signal.SIGINT, -signal.SIGINT, True),  # KeyboardInterrupt: exit hooks run
        ("own-handler", signal.SIGTERM, 0, True),  # the host's handler, then a normal exit
        ("raise", None, 1, False),  # a crash: final totals, but it must page if gone
    ],
)
def test_how_a_process_ends_decides_the_final_export(
    how: str, signum: signal.Signals | None, exit_status: int, stopped: bool
) -> None:
    with otlp_receiver() as (receiver, endpoint):
        process = _start(endpoint, how)
        if signum is not None:
            process.send_signal(signum)
        assert process.wait(timeout=30) == exit_status
        (attributes, records), *more = _exports(receiver)
        assert not more
    assert records == 5
    assert (attributes.get(STATE_KEY) == "stopped") is stopped
    assert attributes["service.name"] == "lifecycle-agent"


def test_sigterm_handling_can_be_turned_off_and_sigkill_sends_nothing() -> None:
    with otlp_receiver() as (receiver, endpoint):
        plain = _start(endpoint, "sleep", OTEL_AGENTS_HANDLE_SIGTERM="false")
        plain.send_signal(signal.SIGTERM)
        assert plain.wait(timeout=30) == -signal.SIGTERM
        killed = _start(endpoint, "sleep")
        killed.kill()
        assert killed.wait(timeout=30) == -signal.SIGKILL
        time.sleep(0.5)  # nothing is on its way: both died at once
        assert _exports(receiver) == []


def test_a_sigterm_final_export_is_bounded_when_the_gateway_is_down() -> None:
    with otlp_receiver() as (_, endpoint):
        pass  # closed: nothing listens there any more
    process = _start(endpoint, "sleep", OTEL_AGENTS_SHUTDOWN_TIMEOUT="2")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM
    assert time.monotonic() - started < 4


class _Recorder(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.exported: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object
    ) -> MetricExportResult:
        self.exported.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        pass


def test_only_exports_after_the_announcement_carry_the_notice() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=Resource({"service.name": "s"}))
    provider.get_meter("m").create_counter("c").add(1)
    data = reader.get_metrics_data()
    assert data is not None
    recorder = _Recorder()
    exporter = StopAnnouncingExporter(recorder)
    exporter.export(data)
    exporter.announce_stop()
    exporter.export(data)
    before, after = (d.resource_metrics[0].resource.attributes for d in recorder.exported)
    assert STATE_KEY not in before
    assert after[STATE_KEY] == "stopped"
    assert after["service.name"] == "s"
    provider.shutdown()
