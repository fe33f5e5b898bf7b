"""`setup_metrics`: one call wires an agent to the gateway; it never raises into the host.

Where this sits: agent code ──(otel_agents: *wiring*)──▶ OTLP/gRPC ──▶ gateway.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import uuid
from collections.abc import Mapping

from opentelemetry import metrics
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_VERSION,
    TELEMETRY_SDK_LANGUAGE,
    TELEMETRY_SDK_NAME,
    TELEMETRY_SDK_VERSION,
    Resource,
)
from opentelemetry.sdk.version import __version__ as sdk_version

from otel_agents.config import AgentConfig, ConfigError
from otel_agents.telemetry import AgentTelemetry

_logger = logging.getLogger(__name__)

AGENT_TYPES = ("connector", "etl")
"""Allowed values of the `agent.type` resource attribute (dashboards filter on it)."""

# Data points per OTLP request. Even a histogram point with several attributes stays
# under ~2 KiB, so a request stays far below gRPC's 4 MiB limit, which would otherwise
# be refused RESOURCE_EXHAUSTED and retried in vain.
MAX_POINTS_PER_REQUEST = 1000

# Cumulative totals survive a gateway outage (the next export carries them); delta
# lost 78 % of counts in a 2-minute outage. Explicit, so that
# OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE cannot switch it.
_CUMULATIVE: dict[type, AggregationTemporality] = {
    kind: AggregationTemporality.CUMULATIVE
    for kind in (
        Counter,
        UpDownCounter,
        Histogram,
        ObservableCounter,
        ObservableUpDownCounter,
        ObservableGauge,
    )
}

_global_lock = threading.Lock()
_global_installed = False
_instance_id: tuple[int, str] | None = None  # (pid, uuid): new id in a forked child


def setup_metrics(
    service_name: str,
    agent_type: str,
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    service_version: str | None = None,
    config: AgentConfig | None = None,
    environ: Mapping[str, str] | None = None,
    reader: MetricReader | None = None,
    set_global: bool = True,
) -> AgentTelemetry:
    """Export this agent's metrics to the gateway; return the handle to its meter.

    Settings come from `config`, else from `environ` (default `os.environ`); `api_key`
    and `endpoint` override them. `reader` replaces the OTLP exporter (tests pass an
    InMemoryMetricReader). A bad setting logs one error and returns disabled telemetry.
    """
    try:
        settings = config if config is not None else AgentConfig.from_env(_environ(environ))
        if endpoint is not None:
            settings = settings.with_endpoint(endpoint)
        if api_key is not None:
            settings = settings.with_api_key(api_key)
        if settings.sdk_disabled:
            _logger.info("otel_agents: metrics disabled by OTEL_SDK_DISABLED=true")
            return AgentTelemetry.disabled()
        resource = build_resource(settings, service_name, agent_type, service_version)
        return _start(settings, resource, reader, set_global)
    except ConfigError as exc:
        _logger.error("otel_agents: metrics disabled: %s", exc)
    except Exception:
        _logger.exception("otel_agents: metrics disabled: setup failed unexpectedly")
    return AgentTelemetry.disabled()


def build_resource(
    config: AgentConfig, service_name: str, agent_type: str, service_version: str | None
) -> Resource:
    """The resource identifying this agent: service.*, agent.type, telemetry.sdk.*.

    OTEL_RESOURCE_ATTRIBUTES and then OTEL_SERVICE_NAME override the arguments, as
    operators expect; `agent.type` always comes from the (checked) argument.
    """
    if agent_type not in AGENT_TYPES:
        raise ConfigError(
            f"agent_type={agent_type!r} is not one of {', '.join(AGENT_TYPES)}; "
            "pass one of those to setup_metrics"
        )
    attributes = {
        TELEMETRY_SDK_LANGUAGE: "python",
        TELEMETRY_SDK_NAME: "opentelemetry",
        TELEMETRY_SDK_VERSION: sdk_version,
        SERVICE_NAME: service_name.strip(),
        # Series identity in the Collector is service.name + service.instance.id, so it
        # must differ between processes or their series overwrite each other.
        SERVICE_INSTANCE_ID: _process_instance_id(),
    }
    if service_version:
        attributes[SERVICE_VERSION] = service_version
    attributes.update(config.resource_attributes)
    if config.service_name:
        attributes[SERVICE_NAME] = config.service_name
    attributes["agent.type"] = agent_type
    if not attributes[SERVICE_NAME]:
        raise ConfigError("service_name is empty; pass a name or set OTEL_SERVICE_NAME")
    return Resource(attributes)


def _start(
    config: AgentConfig, resource: Resource, reader: MetricReader | None, set_global: bool
) -> AgentTelemetry:
    if reader is None:
        reader = PeriodicExportingMetricReader(
            _build_exporter(config),
            export_interval_millis=config.export_interval_ms,
            export_timeout_millis=config.timeout_s * 1000,
        )
        if not any(key == "authorization" for key, _ in config.grpc_metadata()):
            _logger.warning(
                "otel_agents: no API key (set OTEL_AGENTS_API_KEY or pass api_key=); "
                "the gateway will refuse these metrics"
            )
        _logger.info(
            "otel_agents: exporting metrics to %s every %.0f s",
            config.endpoint,
            config.export_interval_ms / 1000,
        )
    # shutdown_on_exit=False: the SDK's own exit hook is unbounded; ours is not.
    provider = SdkMeterProvider(metric_readers=[reader], resource=resource, shutdown_on_exit=False)
    telemetry = AgentTelemetry(
        provider, sdk_provider=provider, shutdown_timeout_s=config.shutdown_timeout_s
    )
    atexit.register(telemetry.shutdown)
    if set_global:
        _install_global(provider)
    return telemetry


def _build_exporter(config: AgentConfig) -> MetricExporter:
    # Imported here so that `import otel_agents` stays cheap (grpc, protobuf) for
    # hosts that never export.
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    credentials = None
    if config.use_tls:
        root_certificates = None
        if config.certificate_file:
            try:
                with open(config.certificate_file, "rb") as pem:
                    root_certificates = pem.read()
            except OSError as exc:
                raise ConfigError(
                    f"OTEL_EXPORTER_OTLP_(METRICS_)CERTIFICATE: cannot read "
                    f"{config.certificate_file!r} ({exc.strerror}); point it to a PEM file"
                ) from exc
        # Built here so the exporter does not fall back to reading os.environ.
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
    return OTLPMetricExporter(
        endpoint=config.endpoint,
        insecure=not config.use_tls,
        credentials=credentials,
        # Header keys are lower-cased by the config: an upper-case key fails every export.
        # (An empty tuple makes the exporter read OTEL_EXPORTER_OTLP_HEADERS itself.)
        headers=config.grpc_metadata(),
        timeout=config.timeout_s,
        compression=grpc.Compression.Gzip
        if config.compression == "gzip"
        else grpc.Compression.NoCompression,
        preferred_temporality=dict(_CUMULATIVE),
        max_export_batch_size=MAX_POINTS_PER_REQUEST,
    )


def _install_global(provider: SdkMeterProvider) -> None:
    global _global_installed
    with _global_lock:
        if _global_installed:
            _logger.warning(
                "otel_agents: the global meter provider was set by an earlier "
                "setup_metrics call; this one is not global (pass set_global=False)"
            )
            return
        _global_installed = True
    metrics.set_meter_provider(provider)


def _process_instance_id() -> str:
    global _instance_id
    if _instance_id is None or _instance_id[0] != os.getpid():
        _instance_id = (os.getpid(), str(uuid.uuid4()))
    return _instance_id[1]


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ
