"""Connector metrics: bytes and records a connector sends, counted once per batch.

Where this sits: connector code ──(otel_agents: *instruments*)──▶ OTLP/gRPC ──▶ gateway.
Through the Collector's prometheus exporter (UnderscoreEscapingWithSuffixes) these become
`connector_bytes_sent_total` and `connector_records_sent_total`.
"""

from __future__ import annotations

from opentelemetry.metrics import Meter

from otel_agents.telemetry import AgentTelemetry

BYTES_SENT = "connector.bytes_sent"
"""Counter, unit `By` (Prometheus: connector_bytes_sent_total)."""
RECORDS_SENT = "connector.records_sent"
"""Counter, unit `{record}`, which Prometheus drops (connector_records_sent_total)."""


class ConnectorMetrics:
    """The instruments of a connector agent; call `record_batch` once per batch."""

    __slots__ = ("_bytes", "_records")

    def __init__(self, meter: Meter) -> None:
        """Create the counters on `meter` (usually `AgentTelemetry.meter`)."""
        self._bytes = meter.create_counter(
            BYTES_SENT, unit="By", description="Bytes of record data sent by the connector."
        )
        self._records = meter.create_counter(
            RECORDS_SENT, unit="{record}", description="Records sent by the connector."
        )
        # Start both series at 0 so that Prometheus' increase() sees the first batch too.
        self._bytes.add(0)
        self._records.add(0)

    def record_batch(self, rows: int, nbytes: int) -> None:
        """Count one sent batch of `rows` records and `nbytes` bytes.

        Call it per batch, never per record: an SDK add costs 3-6 µs. No attributes on
        purpose: they cost per call, and the gateway stamps tenant_id on every point.
        """
        self._records.add(rows)
        self._bytes.add(nbytes)


def connector_metrics(telemetry: AgentTelemetry) -> ConnectorMetrics:
    """The connector instruments of `telemetry` (no-ops when metrics are disabled)."""
    return ConnectorMetrics(telemetry.meter)
