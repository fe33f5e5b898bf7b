"""The legacy JSON reporter: POST /api/metrics/agent/{tenant_id} → the same OTLP path.

Old agents post one JSON report of their totals and gauges. Each report becomes
an OTLP request with exactly the instrument names and units `otel_agents` uses,
so Prometheus shows the same series (`connector_bytes_sent_total`, ...) whichever
way an agent reports. The report then takes the road of every export, the
chain of gateway.chain: decoding a report is parsing it and building that
request.

An agent's identity (`service.instance.id`) is the report's `agent_id` (or
`instance_id`), else the `X-Agent-Id` header, else `<tenant>-<agent_type>`: one
unnamed agent per tenant and type. Run several? Give each an id, or their series
overwrite each other.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Annotated, Literal

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.chain import Chain, Decoding
from gateway.errors import InvalidReport, InvalidRequest, TenantMismatch
from gateway.http_edge import (
    Receive,
    RequestBody,
    Scope,
    Send,
    check_encoding,
    credentials,
    header,
    json_answer,
    json_refusal,
)
from gateway.tenants import Tenant
from otel_agents import names
from otel_agents.names import ContractMetric

logger = logging.getLogger(__name__)

TRANSPORT = "legacy"
PATH_PREFIX = "/api/metrics/agent/"
MAX_REPORT_BYTES = 64 * 1024
"""A report is a few hundred bytes; anything near this is not one."""
SCOPE = InstrumentationScope(name=names.SCOPE)
"""The scope `otel_agents` reports under, so the series are the same as the library's."""
AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"
MAX_UPTIME_SECONDS = 100 * 365 * 86400.0
Total = Annotated[int, Field(ge=0, le=2**63 - 1)]
"""A cumulative count: an OTLP int64."""


class LegacyReport(BaseModel):
    """One report of a legacy agent; fields left out produce no data point."""

    # Unknown fields are ignored: old reporters may send more than this.
    model_config = ConfigDict(
        extra="ignore", validate_by_name=True, validate_by_alias=True, allow_inf_nan=False
    )

    agent_type: Literal["connector", "etl"]
    agent_id: str | None = Field(
        None, alias="instance_id", pattern=AGENT_ID_PATTERN, description="the agent's id"
    )
    version: str | None = Field(None, max_length=64)
    uptime_seconds: float | None = Field(None, ge=0, le=MAX_UPTIME_SECONDS)
    connected: bool | None = None
    # connector
    errors_total: Total | None = None
    bytes_sent_total: Total | None = None
    records_sent_total: Total | None = None
    queries_processed: Total | None = None
    certificate_expiry_days: float | None = Field(None, ge=-36500, le=36500)
    # etl
    flows_executed_total: Total | None = None
    flows_success_total: Total | None = None
    flows_failed_total: Total | None = None
    tasks_executed_total: Total | None = None
    last_flow_duration_seconds: float | None = Field(None, ge=0, le=MAX_UPTIME_SECONDS)
    last_flow_name: str | None = Field(None, max_length=200)


@dataclass(frozen=True)
class Instrument:
    """How one report field becomes an OTel instrument of the contract."""

    field: str
    metric: ContractMetric

    @property
    def monotonic_sum(self) -> bool:
        """A cumulative monotonic sum, else a gauge."""
        return self.metric.kind == "counter"


# The agents' names come from otel_agents.names, their one home.
# tests/unit/gateway/test_legacy.py compares every row with what the library's own
# instruments export.
INSTRUMENTS: dict[str, tuple[Instrument, ...]] = {
    "connector": (
        Instrument("bytes_sent_total", names.CONNECTOR_BYTES_SENT),
        Instrument("records_sent_total", names.CONNECTOR_RECORDS_SENT),
        Instrument("queries_processed", names.CONNECTOR_QUERIES_PROCESSED),
        Instrument("errors_total", names.CONNECTOR_ERRORS),
        Instrument("uptime_seconds", names.CONNECTOR_UPTIME),
        Instrument("connected", names.CONNECTOR_CONNECTED),
        Instrument("certificate_expiry_days", names.CONNECTOR_CERTIFICATE_EXPIRY),
    ),
    "etl": (
        Instrument("flows_executed_total", names.AGENT_FLOWS_EXECUTED),
        Instrument("flows_success_total", names.AGENT_FLOWS_SUCCESS),
        Instrument("flows_failed_total", names.AGENT_FLOWS_FAILED),
        Instrument("tasks_executed_total", names.AGENT_TASKS_EXECUTED),
        Instrument("last_flow_duration_seconds", names.AGENT_LAST_FLOW_DURATION),
        Instrument("uptime_seconds", names.AGENT_UPTIME),
        Instrument("connected", names.AGENT_CONNECTED),
    ),
}
"""Per agent type; fields of the other type are ignored."""


def _string(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def to_otlp(report: LegacyReport, agent_id: str, now: float) -> ExportMetricsServiceRequest:
    """The OTLP request carrying `report`, as `otel_agents` would have exported it."""
    now_ns = int(now * 1e9)
    # Counters are totals since the agent started: their start is its start time.
    start_ns = int((now - report.uptime_seconds) * 1e9) if report.uptime_seconds else 0
    metrics = []
    for instrument in INSTRUMENTS[report.agent_type]:
        value = getattr(report, instrument.field)
        if value is None:
            continue
        point = NumberDataPoint(time_unix_nano=now_ns)
        if isinstance(value, float):
            point.as_double = value
        else:
            point.as_int = int(value)
        metric = Metric(name=instrument.metric.name, unit=instrument.metric.unit)
        if instrument.monotonic_sum:
            point.start_time_unix_nano = start_ns
            metric.sum.CopyFrom(
                Sum(
                    data_points=[point],
                    is_monotonic=True,
                    aggregation_temporality=AGGREGATION_TEMPORALITY_CUMULATIVE,
                )
            )
        else:
            if instrument.field == "last_flow_duration_seconds" and report.last_flow_name:
                point.attributes.append(_string("flow", report.last_flow_name))
            metric.gauge.CopyFrom(Gauge(data_points=[point]))
        metrics.append(metric)
    resource_metrics = ResourceMetrics(scope_metrics=[ScopeMetrics(scope=SCOPE, metrics=metrics)])
    resource_metrics.resource.attributes.extend(
        [
            _string("service.name", f"legacy-{report.agent_type}"),
            _string("service.instance.id", agent_id),
            _string("agent.type", report.agent_type),
        ]
    )
    if report.version:
        resource_metrics.resource.attributes.append(_string("service.version", report.version))
    return ExportMetricsServiceRequest(resource_metrics=[resource_metrics])


def parse_report(body: bytes) -> LegacyReport:
    """Validate a report; InvalidReport names every wrong field."""
    try:
        return LegacyReport.model_validate_json(body)
    except ValidationError as exc:
        detail = [
            {"loc": ["body", *error["loc"]], "msg": error["msg"], "type": error["type"]}
            for error in exc.errors(include_url=False, include_input=False)
        ]
        fields = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'][1:]) or 'body'}: {item['msg']}"
            for item in detail
        )
        raise InvalidReport(f"invalid report: {fields}", detail) from exc


def agent_id_of(report: LegacyReport, header: str | None, tenant: Tenant) -> str:
    """The report's agent id, else the X-Agent-Id header, else `<tenant>-<agent_type>`."""
    if report.agent_id:
        return report.agent_id
    if header:
        if not re.fullmatch(AGENT_ID_PATTERN, header):
            raise InvalidRequest(
                "the X-Agent-Id header must be 1-128 letters, digits and ._:@/- "
                "(starting with a letter or digit)"
            )
        return header
    return f"{tenant.id}-{report.agent_type}"


class LegacyReportRoute:
    """POST /api/metrics/agent/{tenant_id}, a plain ASGI app: the chain, then a JSON answer."""

    def __init__(self, chain: Chain) -> None:
        self._chain = chain

    async def __call__(self, scope: Scope, receive: Receive, send: Send, tenant_id: str) -> None:
        """One legacy report for the tenant the URL names: counted with
        transport="legacy", whatever its outcome."""
        agent_header = header(scope, b"x-agent-id")
        encoding = header(scope, b"content-encoding")

        def vet(tenant: Tenant) -> None:
            if tenant.id != tenant_id:
                raise TenantMismatch(
                    f"this key belongs to tenant {tenant.id!r} but the URL names "
                    f"{tenant_id!r}: post to {PATH_PREFIX}{tenant.id} or use {tenant_id!r}'s key"
                )
            check_encoding(encoding)

        async def decode(decoding: Decoding, body: bytes) -> ExportMetricsServiceRequest:
            # A report is at most MAX_REPORT_BYTES: small enough to read in one go.
            report = parse_report(body)
            agent_id = agent_id_of(report, agent_header, decoding.tenant)
            return to_otlp(report, agent_id, time.time())

        outcome = await self._chain.export(
            TRANSPORT,
            credentials(scope),
            RequestBody(scope, receive),
            decode,
            vet=vet,
            max_body_bytes=MAX_REPORT_BYTES,
        )
        if outcome.error is not None:
            await json_refusal(outcome.error).send(send)
        else:
            await json_answer({"status": "accepted"}).send(send)
