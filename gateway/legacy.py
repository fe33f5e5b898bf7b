"""The legacy JSON reporter: POST /api/metrics/agent/{tenant_id} → the same OTLP path.

Old agents post one JSON report of their totals and gauges. Each report becomes
an OTLP request with exactly the instrument names and units `otel_agents` uses,
so Prometheus shows the same series (`connector_bytes_sent_total`, ...) whichever
way an agent reports. The report then takes the road of every export:
authenticate → admit → ingest (tenant stamped there).

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
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
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

from gateway.app import Gateway
from gateway.errors import GatewayError, InvalidRequest
from gateway.http_edge import credentials, decode_content, read_body, retry_after
from gateway.tenants import Tenant

logger = logging.getLogger(__name__)

TRANSPORT = "legacy"
UNKNOWN_TENANT = "unknown"
MAX_REPORT_BYTES = 64 * 1024
"""A report is a few hundred bytes; anything near this is not one."""
SCOPE = InstrumentationScope(name="otel_agents")
"""The scope `otel_agents` reports under, so the series are the same as the library's."""
AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"
MAX_UPTIME_SECONDS = 100 * 365 * 86400.0
Total = Annotated[int, Field(ge=0, le=2**63 - 1)]
"""A cumulative count: an OTLP int64."""


class TenantMismatch(GatewayError):
    """The URL names another tenant than the key's."""

    reason = "tenant_mismatch"
    http_status = 403
    grpc_status = grpc.StatusCode.PERMISSION_DENIED


class InvalidReport(InvalidRequest):
    """A report that is JSON but not a valid legacy report (answered 422, field named)."""

    http_status = 422

    def __init__(self, message: str, detail: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.detail = detail


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
    """How one report field becomes an OTel instrument."""

    field: str
    name: str
    unit: str
    monotonic_sum: bool  # else a gauge


INSTRUMENTS: dict[str, tuple[Instrument, ...]] = {
    "connector": (
        Instrument("bytes_sent_total", "connector.bytes_sent", "By", True),
        Instrument("records_sent_total", "connector.records_sent", "{record}", True),
        Instrument("queries_processed", "connector.queries_processed", "{query}", True),
        Instrument("errors_total", "connector.errors", "{error}", True),
        Instrument("uptime_seconds", "connector.uptime", "s", False),
        Instrument("connected", "connector.connected", "", False),
        Instrument("certificate_expiry_days", "connector.certificate_expiry_days", "", False),
    ),
    "etl": (
        Instrument("flows_executed_total", "agent.flows_executed", "{flow}", True),
        Instrument("flows_success_total", "agent.flows_success", "{flow}", True),
        Instrument("flows_failed_total", "agent.flows_failed", "{flow}", True),
        Instrument("tasks_executed_total", "agent.tasks_executed", "{task}", True),
        Instrument("last_flow_duration_seconds", "agent.last_flow_duration", "s", False),
        Instrument("uptime_seconds", "agent.uptime", "s", False),
        Instrument("connected", "agent.connected", "", False),
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
        metric = Metric(name=instrument.name, unit=instrument.unit)
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


def _error_response(error: GatewayError) -> JSONResponse:
    content: dict[str, Any] = {"error": error.reason, "message": error.message}
    if isinstance(error, InvalidReport):
        content["detail"] = error.detail
    response = JSONResponse(content, status_code=error.http_status)
    delay = retry_after(error)
    if delay is not None:
        response.headers["Retry-After"] = delay
    return response


async def report(gateway: Gateway, request: Request, tenant_id: str) -> JSONResponse:
    """One legacy report: counted with transport="legacy", whatever its outcome."""
    counted_tenant = UNKNOWN_TENANT
    error: GatewayError | None = None
    body = b""
    entered = False  # taken into the in-flight bound
    try:
        tenant = gateway.authenticator.authenticate(credentials(request))
        counted_tenant = tenant.id
        if tenant.id != tenant_id:
            raise TenantMismatch(
                f"this key belongs to tenant {tenant.id!r} but the URL names {tenant_id!r}: "
                f"post to /api/metrics/agent/{tenant.id} or use {tenant_id!r}'s key"
            )
        raw = await read_body(request, MAX_REPORT_BYTES)
        body = decode_content(raw, request.headers.get("content-encoding"), MAX_REPORT_BYTES)
        gateway.in_flight.enter(len(body))
        entered = True
        gateway.ingestor.admit(tenant, len(body))
        parsed = parse_report(body)
        agent_id = agent_id_of(parsed, request.headers.get("x-agent-id"), tenant)
        await gateway.ingestor.ingest(tenant, to_otlp(parsed, agent_id, time.time()))
    except GatewayError as exc:
        error = exc
    except Exception:
        logger.exception("unexpected error handling a legacy report for tenant %s", counted_tenant)
        error = GatewayError("unexpected gateway error; the report was not stored")
    finally:
        if entered:
            gateway.in_flight.exit(len(body))
    gateway.count_outcome(TRANSPORT, counted_tenant, error)
    if error is not None:
        return _error_response(error)
    return JSONResponse({"status": "accepted"})


def legacy_router(gateway: Gateway) -> APIRouter:
    """The legacy reporter's route of one gateway."""
    router = APIRouter()

    @router.post("/api/metrics/agent/{tenant_id}")
    async def post_report(tenant_id: str, request: Request) -> JSONResponse:
        """A legacy agent's JSON report for `tenant_id` (the key's tenant)."""
        return await report(gateway, request, tenant_id)

    return router
