"""An instrument past the SDK's cardinality limit is named in one warning, not silently merged."""

from __future__ import annotations

import logging

import pytest
from live_gateway import LiveGateway

from otel_agents import setup_metrics

DISTINCT = 2_500  # over the SDK's default limit of 2,000 attribute sets


def test_an_overflowing_instrument_is_warned_about_once(
    gateway: LiveGateway, caplog: pytest.LogCaptureFixture
) -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": gateway.grpc_endpoint,
        "OTEL_AGENTS_API_KEY": gateway.keys["acme"],
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        "OTEL_AGENTS_HANDLE_SIGTERM": "false",
    }
    t = setup_metrics("overflow", "connector", environ=environ, set_global=False)
    requests = t.meter.create_counter("app.requests")
    fine = t.meter.create_counter("app.fine")
    with caplog.at_level(logging.WARNING, logger="otel_agents"):
        for i in range(DISTINCT):
            requests.add(1, {"user": f"user-{i}"})  # an unbounded attribute
            fine.add(1, {"kind": "a" if i % 2 else "b"})
        assert t.force_flush(10)
        requests.add(1, {"user": "one-more"})
        assert t.force_flush(10)
    t.shutdown(5)
    warnings = [r.getMessage() for r in caplog.records if "attribute sets" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "'app.requests'" in warnings[0]
    assert "limit of 2000" in warnings[0]
    assert "otel.metric.overflow" in warnings[0]
    # What was counted still arrived, in 2,000 series plus the overflow one.
    assert gateway.collector.received
