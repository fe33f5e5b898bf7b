"""`setup_metrics`: one call wires an agent to the gateway; it never raises into the host.

Where this sits: agent code ──(otel_agents: *wiring*)──▶ OTLP/gRPC ──▶ gateway.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Mapping

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
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
from otel_agents.exporters import build_exporter, exemplar_filter
from otel_agents.forks import follow_forks
from otel_agents.identity import host_name, release_slots, stable_instance_id
from otel_agents.lifecycle import StopAnnouncingExporter
from otel_agents.signals import on_sigterm, signals_blocked
from otel_agents.telemetry import AgentTelemetry

_logger = logging.getLogger(__name__)

AGENT_TYPE = "agent.type"
"""Resource attribute naming what kind of agent this is; the gateway pages only for these."""
AGENT_TYPES = ("connector", "etl")
"""Allowed values of `agent.type`; any other client is an "other" to the gateway."""
HOST_NAME = "host.name"

_global_lock = threading.Lock()
_global_installed = False
_exiting: list[AgentTelemetry] = []  # every exporting agent: its final export at exit
_finalizer_pid: int | None = None  # the multiprocessing child whose end exports them
# multiprocessing runs finalizers of priority >= 0 in its children, highest first.
_MULTIPROCESSING_EXIT_PRIORITY = 10


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
        for warning in settings.warnings:
            _logger.warning("otel_agents: %s", warning)
        if settings.sdk_disabled:
            _logger.info("otel_agents: metrics disabled by OTEL_SDK_DISABLED=true")
            return AgentTelemetry.disabled()
        if not settings.exporter_enabled and reader is None:
            _logger.info("otel_agents: metrics disabled by OTEL_METRICS_EXPORTER=none")
            return AgentTelemetry.disabled()
        resource = build_resource(
            settings, service_name, agent_type, service_version, _environ(environ)
        )
        return _start(settings, resource, reader, set_global)
    except ConfigError as exc:
        _logger.error("otel_agents: metrics disabled: %s", exc)
    except Exception:
        _logger.exception("otel_agents: metrics disabled: setup failed unexpectedly")
    return AgentTelemetry.disabled()


def build_resource(
    config: AgentConfig,
    service_name: str,
    agent_type: str,
    service_version: str | None,
    environ: Mapping[str, str] | None = None,
) -> Resource:
    """The resource identifying this agent: service.*, host.name, agent.type, telemetry.sdk.*.

    OTEL_RESOURCE_ATTRIBUTES and then OTEL_SERVICE_NAME override the arguments, as
    operators expect; `agent.type` always comes from the (checked) argument. Unless
    OTEL_RESOURCE_ATTRIBUTES sets `service.instance.id`, it is stable across restarts
    (see `otel_agents.identity`; `environ`, default `os.environ`, may place it in a
    Kubernetes pod).
    """
    if agent_type not in AGENT_TYPES:
        raise ConfigError(
            f"agent_type={agent_type!r} is not one of {', '.join(AGENT_TYPES)}; "
            "pass one of those to setup_metrics"
        )
    for name, value in (("service_name", service_name), ("service_version", service_version)):
        if value and not _utf8(value):
            # Bytes that are not UTF-8 (a file name, sys.argv) reach Python as lone
            # surrogates, which no export can carry.
            raise ConfigError(f"the {name} argument is not valid UTF-8 text; pass text")
    attributes = {
        TELEMETRY_SDK_LANGUAGE: "python",
        TELEMETRY_SDK_NAME: "opentelemetry",
        TELEMETRY_SDK_VERSION: sdk_version,
        SERVICE_NAME: service_name.strip(),
        HOST_NAME: host_name(),
    }
    if service_version:
        attributes[SERVICE_VERSION] = service_version
    attributes.update(config.resource_attributes)
    if config.service_name:
        attributes[SERVICE_NAME] = config.service_name
    attributes[AGENT_TYPE] = agent_type
    if not attributes[SERVICE_NAME]:
        raise ConfigError("service_name is empty; pass a name or set OTEL_SERVICE_NAME")
    if not attributes.get(SERVICE_INSTANCE_ID):
        # Series identity in the Collector is service.name + service.instance.id: it
        # must differ between agents, and stay the same when one restarts.
        attributes[SERVICE_INSTANCE_ID] = stable_instance_id(
            attributes[SERVICE_NAME], attributes=attributes, environ=environ
        )
    return Resource(attributes)


def _start(
    config: AgentConfig, resource: Resource, reader: MetricReader | None, set_global: bool
) -> AgentTelemetry:
    announcer = None
    if reader is None:
        # gRPC's and the reader's threads must leave the host's signals to its main thread.
        with signals_blocked():
            announcer = StopAnnouncingExporter(_build_exporter(config))
            reader = PeriodicExportingMetricReader(
                announcer,
                export_interval_millis=config.export_interval_ms,
                export_timeout_millis=config.export_timeout_ms,
            )
        client_certificate = config.use_tls and config.client_certificate_file
        if not client_certificate and not any(
            key == "authorization" for key, _ in config.grpc_metadata()
        ):
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
    provider = SdkMeterProvider(
        metric_readers=[reader],
        resource=resource,
        exemplar_filter=exemplar_filter(config),
        shutdown_on_exit=False,
    )
    telemetry = AgentTelemetry(
        provider,
        sdk_provider=provider,
        shutdown_timeout_s=config.shutdown_timeout_s,
        exporter=announcer,
        config=config,
        service_version=_text(resource.attributes.get(SERVICE_VERSION)),
        instance_id=_text(resource.attributes.get(SERVICE_INSTANCE_ID)),
    )
    follow_forks(telemetry, provider, resource)  # right after the SDK's fork hook
    _exit_with(telemetry)
    if announcer is not None and config.handle_sigterm:
        on_sigterm(telemetry.shutdown)
    if set_global:
        _install_global(provider)
    return telemetry


def _exit_with(telemetry: AgentTelemetry) -> None:
    """Send `telemetry`'s final export at exit, side by side with the others'."""
    with _global_lock:
        if not _exiting:
            atexit.register(_final_exports)
        _exiting.append(telemetry)
    _at_multiprocessing_exit()


def _at_multiprocessing_exit() -> None:
    """In a multiprocessing child, also run the final exports at its end: it ends with
    `os._exit` (start methods 'fork' and 'forkserver', the default from Python 3.14),
    which skips atexit, after running multiprocessing's own finalizers."""
    global _finalizer_pid
    process = sys.modules.get("multiprocessing.process")
    util = sys.modules.get("multiprocessing.util")
    if process is None or util is None or process.parent_process() is None:
        return
    with _global_lock:
        if _finalizer_pid == os.getpid():
            return
        _finalizer_pid = os.getpid()
    util.Finalize(None, _final_exports, exitpriority=_MULTIPROCESSING_EXIT_PRIORITY)
    util.Finalize(None, release_slots, exitpriority=_MULTIPROCESSING_EXIT_PRIORITY - 1)


def _final_exports() -> None:
    """The exit hook of every `setup_metrics`: one after another, a host that set up
    metrics N times would wait N shutdown timeouts at exit (30 times 2 s: 54 s)."""
    with _global_lock:
        every = list(_exiting)
    workers = [threading.Thread(target=t.at_exit, daemon=True) for t in every]
    try:
        with signals_blocked():
            for worker in workers:
                worker.start()
    except RuntimeError:  # no new threads at exit (Python 3.12.0-3.12.1): one by one
        for telemetry in every:
            telemetry.at_exit()
        return
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:  # a second Ctrl-C: the user does not want to wait
        _logger.warning("otel_agents: final export abandoned (interrupted at exit)")


def _build_exporter(config: AgentConfig) -> MetricExporter:
    return build_exporter(config)


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


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
