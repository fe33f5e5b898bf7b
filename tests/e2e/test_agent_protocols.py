"""otel_agents over OTLP/HTTP, configured only by the standard variables, into Prometheus.

The same agent code as over OTLP/gRPC: `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` and
the gateway's HTTP base URL are all it takes; counts arrive exact, under the key's
tenant, on every series and on `target_info`. And an agent stopped by a signal
(SIGTERM from systemd, Kubernetes or Docker; SIGINT from a terminal) exports its last
counts on the way out, exact in Prometheus, and the gateway marks it stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from otel_agents import connector_metrics, setup_metrics
from stack.local import LocalStack, default_sigint

pytestmark = pytest.mark.e2e

Keys = tuple[Path, dict[str, str]]


def _by_tenant(result: list[dict[str, Any]]) -> dict[str, float]:
    return {series["metric"]["tenant_id"]: float(series["value"][1]) for series in result}


@pytest.mark.parametrize(
    ("protocol_variable", "endpoint_variable", "path"),
    [
        # The base URL: /v1/metrics is appended.
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        # The signal-specific URL, used as is.
        (
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "/v1/metrics",
        ),
    ],
)
def test_otlp_http_from_the_environment_reaches_prometheus_exactly(
    stack: LocalStack,
    tenant_keys: Keys,
    protocol_variable: str,
    endpoint_variable: str,
    path: str,
) -> None:
    _, keys = tenant_keys
    job = f"e2e-http-{uuid.uuid4().hex[:8]}"
    environ = {
        protocol_variable: "http/protobuf",
        endpoint_variable: stack.gateway_http_url + path,
        "OTEL_AGENTS_API_KEY": keys["globex"],
        "OTEL_SERVICE_NAME": job,
        "OTEL_RESOURCE_ATTRIBUTES": "service.version=3.0.1",
    }
    telemetry = setup_metrics("in-code-name", "connector", environ=environ, set_global=False)
    assert telemetry.enabled
    counters = connector_metrics(telemetry)
    for rows, nbytes in [(40, 4000), (2, 321)]:
        counters.record_batch(rows, nbytes)
    counters.record_query()
    counters.record_error("UNAVAILABLE")
    assert telemetry.force_flush(10)

    expected = {
        f'connector_bytes_sent_total{{job="{job}"}}': 4321.0,
        f'connector_records_sent_total{{job="{job}"}}': 42.0,
        f'connector_queries_processed_total{{job="{job}"}}': 1.0,
        f'connector_errors_total{{job="{job}", error_type="unavailable"}}': 1.0,
    }
    for query, value in expected.items():
        result = stack.wait_for(query, lambda r: len(r) == 1)
        assert _by_tenant(result) == {"globex": value}, query
    info = stack.wait_for(f'target_info{{job="{job}"}}', lambda r: len(r) == 1)
    assert info[0]["metric"]["tenant_id"] == "globex"
    assert info[0]["metric"]["agent_type"] == "connector"
    assert info[0]["metric"]["service_version"] == "3.0.1"
    assert telemetry.shutdown(timeout_s=10)


AGENT_SCRIPT = """
import sys, time
from otel_agents import connector_metrics, setup_metrics

telemetry = setup_metrics("e2e-sigterm-connector", "connector")
counters = connector_metrics(telemetry)
counters.record_batch(17, 1700)
counters.record_batch(3, 234)
counters.record_query()
print("COUNTED", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signalled_agent_exports_its_last_counts_and_says_it_stopped(
    stack: LocalStack, tenant_keys: Keys, tmp_path: Path, signal_name: str
) -> None:
    _, keys = tenant_keys
    instance = f"sig-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "agent.py"
    script.write_text(AGENT_SCRIPT)
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.gateway_grpc_endpoint,
        "OTEL_AGENTS_API_KEY": keys["acme"],
        # No periodic export before the signal: only the final one can carry the counts.
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={instance}",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    agent = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == "COUNTED"
        signum = getattr(signal, signal_name)
        agent.send_signal(signum)
        # It ends by the signal, as a process without otel_agents would.
        assert agent.wait(timeout=30) == -signum
    finally:
        if agent.poll() is None:
            agent.kill()
    expected = {
        "connector_bytes_sent_total": 1934.0,
        "connector_records_sent_total": 20.0,
        "connector_queries_processed_total": 1.0,
    }
    for name, value in expected.items():
        result = stack.wait_for(f'{name}{{instance="{instance}"}}', lambda r: len(r) == 1)
        assert _by_tenant(result) == {"acme": value}, name
    # The gateway heard that it stopped: its last-seen series say so.
    stack.wait_for(
        f'connector_last_seen_timestamp_seconds{{instance="{instance}", state="stopped"}}',
        lambda r: len(r) == 1,
    )
