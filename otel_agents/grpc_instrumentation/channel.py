"""`instrument_channel`: a connector's upstream channel, counted and watched, in one call."""

from __future__ import annotations

import grpc

from otel_agents.arrow import ipc_row_count
from otel_agents.connector import ConnectorMetrics
from otel_agents.grpc_instrumentation._counting import Measure, message_size
from otel_agents.grpc_instrumentation.client import ClientInterceptor
from otel_agents.grpc_instrumentation.connectivity import watch_connectivity


def instrument_channel(
    channel: grpc.Channel,
    metrics: ConnectorMetrics,
    *,
    records_of: Measure | None = ipc_row_count,
    size_of: Measure = message_size,
    watch: bool = True,
) -> grpc.Channel:
    """`channel` with every call counted, and `connector_connected` following its state.

    Counts queries, bytes sent, errors by status and, with the default `records_of`, the
    rows of the Arrow IPC payloads sent (pass None for a channel that sends no Arrow IPC
    streams; a payload that is not one is logged once and counts no rows). With `watch`
    the channel connects now and reconnects when idle (`watch_connectivity`). Use the
    returned channel for the calls.
    """
    if watch:
        watch_connectivity(channel, metrics)
    return grpc.intercept_channel(
        channel, ClientInterceptor(metrics, size_of=size_of, records_of=records_of)
    )
