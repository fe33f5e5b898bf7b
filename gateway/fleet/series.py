"""The fleet's per-agent series, sent to the Collectors beside each agent's own series.

Where this sits: gateway fleet table ──(*fleet series*)──▶ Collector (the agent's shard)
──▶ Prometheus.

Every `interval` the gateway sends, for each connector and data agent it knows, two
gauges under the agent's own resource, so that they land on the agent's Collector
(gateway/shards.py) with the agent's `job` and `instance` labels:

| OpenTelemetry name (unit s) | Prometheus name | value |
|---|---|---|
| `connector.last_seen` | `connector_last_seen_seconds` | seconds since last heard |
| `connector.last_seen.timestamp` | `connector_last_seen_timestamp_seconds` | when (Unix time) |
| `agent.last_seen` | `agent_last_seen_seconds` | the same, data agents |
| `agent.last_seen.timestamp` | `agent_last_seen_timestamp_seconds` | |

Each request holds one tenant's agents and stays under `MAX_REQUEST_BYTES`, and each
agent's resource is the bounded copy the fleet keeps (gateway.fleet): one tenant's
bloated agents cannot make an export that fails for another's.

Their points carry `tenant_id`, `state` (running, stopped, retired), `host`,
`version` and `gateway` (the sending gateway process, host:port: with several
replicas, each sends the agents it has heard from, and the Collector must keep
their series apart; the rules take the newest).

Serving them on the gateway's own /metrics took 2.3 s per scrape at 10,000 agents,
on the event loop that serves exports; here they are a few small exports every
`interval`, built in slices, and they scale with the Collectors.

A series the gateway stops sending stays in the Collector for its
`metric_expiration` (3 minutes). So the series of a stopped or retired agent are
sent for `LINGER_SECONDS` after the change, longer than the running series it
replaces can linger, and then no more: the alert rules ignore a running series
when a newer non-running one of the same agent exists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)

from gateway.errors import GatewayError
from gateway.fleet import FleetTracker, Sighting
from gateway.ingest import Forwarder
from gateway.instruments import LAST_SEEN

logger = logging.getLogger(__name__)

SCOPE = LAST_SEEN["connector"][0].scope
"""Instrumentation scope of the fleet series (their `otel_scope_name` label)."""
NAMES = {family: (since.name, timestamp.name) for family, (since, timestamp) in LAST_SEEN.items()}
"""Per family: (seconds since, timestamp), see the table above (gateway.instruments)."""
LINGER_SECONDS = 600.0
"""How long a stopped or retired agent's series are still sent (> metric_expiration)."""
SLICE = 500
"""Agents per request."""
MAX_REQUEST_BYTES = 1024 * 1024
"""Bytes per request: far below gRPC's 4 MiB default and the forwarder's message limit.
An agent's series take at most about `fleet_max_resource_bytes` + 1 KiB."""


def fleet_requests(
    rows: Iterable[Sighting], now: float, gateway: str = ""
) -> Iterator[ExportMetricsServiceRequest]:
    """The fleet series of `rows` at Unix time `now`, one tenant per request, at most
    `SLICE` agents and `MAX_REQUEST_BYTES` each (a request one tenant's agents made
    too large would fail for every agent in it); `gateway` names this gateway process
    on every point."""
    by_tenant: dict[str, list[Sighting]] = {}
    for row in rows:
        by_tenant.setdefault(row.tenant_id, []).append(row)
    for tenant_rows in by_tenant.values():
        request, size = ExportMetricsServiceRequest(), 0
        for row in tenant_rows:
            family = row.family
            if family is None or (
                row.state != "running" and now - row.state_since > LINGER_SECONDS
            ):
                continue
            series = _agent_series(row, family, now, gateway)
            cost = series.ByteSize() + 8  # the field's tag and length
            full = len(request.resource_metrics) >= SLICE or size + cost > MAX_REQUEST_BYTES
            if full and request.resource_metrics:
                yield request
                request, size = ExportMetricsServiceRequest(), 0
            request.resource_metrics.append(series)
            size += cost
        if request.resource_metrics:
            yield request


async def publish(
    fleet: FleetTracker,
    forwarder: Forwarder,
    interval: float,
    gateway: str,
    owns: Callable[[Sighting], bool] = lambda row: True,
) -> None:
    """Send the fleet series every `interval` seconds until cancelled. Each slice is
    built and handed to the forwarder in turn, the event loop free between them, so
    that exports keep flowing while 10,000 agents' series are built. With a shared
    state store every process knows every agent: each sends only those it `owns`
    (gateway.state), so that each agent has one set of series, not one per process."""
    while True:
        started = time.monotonic()
        failed: GatewayError | None = None
        rows = [row for row in fleet.rows() if owns(row)]
        for request in fleet_requests(rows, time.time(), gateway):
            try:
                await forwarder.forward(request)
            except GatewayError as exc:
                failed = exc
            await asyncio.sleep(0)
        if failed is not None:
            logger.warning(
                "the fleet's last-seen series did not all reach the Collectors: %s", failed
            )
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


def _agent_series(row: Sighting, family: str, now: float, gateway: str) -> ResourceMetrics:
    resource_metrics = ResourceMetrics()
    resource_metrics.resource.attributes.extend(_attributes(row.resource or _fallback(row)))
    attributes = _attributes(
        {"tenant_id": row.tenant_id, "state": row.state, "host": row.host, "version": row.version}
        | ({"gateway": gateway} if gateway else {})
    )
    time_ns = int(now * 1e9)
    since, timestamp = NAMES[family]
    metrics = [
        Metric(
            name=name,
            unit="s",
            gauge=Gauge(
                data_points=[
                    NumberDataPoint(as_double=value, time_unix_nano=time_ns, attributes=attributes)
                ]
            ),
        )
        for name, value in (
            (since, max(0.0, now - row.silence_from)),
            (timestamp, row.silence_from),
        )
    ]
    resource_metrics.scope_metrics.append(
        ScopeMetrics(scope=InstrumentationScope(name=SCOPE), metrics=metrics)
    )
    return resource_metrics


def _fallback(row: Sighting) -> dict[str, str]:
    """The resource of a row saved before resources were kept."""
    return {
        "service.name": row.service,
        "service.instance.id": row.instance,
        "tenant_id": row.tenant_id,
    }


def _attributes(values: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in values.items()]
