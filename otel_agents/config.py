"""Agent settings, read once at start-up from the standard OTEL_* environment variables.

Where this sits: agent code ──(otel_agents: *settings*)──▶ OTLP/gRPC or OTLP/HTTP ──▶ gateway.

The OTel SDK and its exporters read some of these variables themselves, with pitfalls
(a bare ``host:port`` silently meaning TLS, some values raising in the host's start-up).
So everything is parsed and checked here, as the specification says, and the exporter is
handed explicit values. A value that cannot be used falls back to its default with one
warning (`AgentConfig.warnings`); only a setting with no safe fallback (an endpoint or an
API key that cannot be sent) is a `ConfigError`, which turns metrics off with one error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from otel_agents.endpoint import (
    DEFAULT_GRPC_ENDPOINT,
    DEFAULT_HTTP_ENDPOINT,
    PROTOCOLS,
    Endpoint,
    EndpointError,
    Protocol,
    argument_endpoint,
    grpc_endpoint,
    http_endpoint,
)
from otel_agents.env import EnvReader

DEFAULT_ENDPOINT = DEFAULT_GRPC_ENDPOINT
"""Where metrics go when nothing is configured (OTLP/gRPC, the default protocol)."""

Compression = Literal["gzip", "none"]
HistogramAggregation = Literal["explicit_bucket_histogram", "base2_exponential_bucket_histogram"]
ExemplarFilter = Literal["trace_based", "always_on", "always_off"]

# gRPC metadata values (and so an API key) must be printable ASCII.
_API_KEY = re.compile(r"[\x21-\x7e]+")

MAX_SHUTDOWN_TIMEOUT_S = 60.0
"""Longest wait for a final export or a flush: a minute is longer than any export lasts
(the exporter gives up after OTEL_EXPORTER_OTLP_TIMEOUT), and a host must be able to stop."""
MIN_EXPORT_INTERVAL_MS = 100.0
"""Shortest export interval: shorter ones would export in a busy loop."""

_M = "OTEL_EXPORTER_OTLP_METRICS_"
_G = "OTEL_EXPORTER_OTLP_"


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the variable and what to change."""


@dataclass(frozen=True)
class AgentConfig:
    """Validated agent settings; build with `AgentConfig.from_env(os.environ)`.

    Every ``OTEL_EXPORTER_OTLP_*`` setting has a ``OTEL_EXPORTER_OTLP_METRICS_*`` form
    that wins over it.
    """

    endpoint: str = DEFAULT_ENDPOINT
    """OTLP/gRPC: ``http://host:port`` (plaintext) or ``https://host:port`` (TLS);
    OTLP/HTTP: the full URL, ``.../v1/metrics``."""
    protocol: Protocol = "grpc"
    """OTEL_EXPORTER_OTLP_PROTOCOL: ``grpc`` or ``http/protobuf``."""
    endpoint_source: str = "default"
    """The variable or argument the endpoint came from, for messages."""
    tls_implied: bool = False
    """True when TLS comes from a bare ``host:port`` rather than an https:// URL."""
    insecure: bool = False
    """OTEL_EXPORTER_OTLP_INSECURE; decides plaintext only for a bare gRPC ``host:port``."""
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Headers from the headers variable, keys lower-cased (repr hidden: may hold keys)."""
    api_key: str | None = field(default=None, repr=False)
    certificate_file: str | None = None
    """PEM file of the CA that signed the gateway's certificate (default: system roots)."""
    client_certificate_file: str | None = None
    """PEM certificate this agent presents (mutual TLS), with `client_key_file`."""
    client_key_file: str | None = None
    compression: Compression = "gzip"
    timeout_s: float = 10.0
    """OTEL_EXPORTER_OTLP_TIMEOUT: longest time one export (with its retries) may take."""
    export_interval_ms: float = 30_000.0
    export_timeout_ms: float = 30_000.0
    """OTEL_METRIC_EXPORT_TIMEOUT: longest time one collection and export may take."""
    histogram_aggregation: HistogramAggregation = "explicit_bucket_histogram"
    exemplar_filter: ExemplarFilter = "trace_based"
    exporter_enabled: bool = True
    """False when OTEL_METRICS_EXPORTER=none."""
    shutdown_timeout_s: float = 5.0
    service_name: str | None = None
    resource_attributes: tuple[tuple[str, str], ...] = ()
    sdk_disabled: bool = False
    handle_sigterm: bool = True
    """OTEL_AGENTS_HANDLE_SIGTERM: export the final values and say "stopped" on SIGTERM."""
    task_detail: bool = False
    """OTEL_AGENTS_TASK_DETAIL: task counters by `flow` and `task` (3 series per task of each
    flow) instead of one series each per agent (see `otel_agents.etl`)."""
    warnings: tuple[str, ...] = ()
    """Values that could not be used, each with the fallback taken and what to write."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AgentConfig:
        """Read every setting; raise `ConfigError` only where no fallback is safe."""
        env = EnvReader(environ)
        protocol = _protocol(env)
        insecure = env.boolean(_M + "INSECURE", _G + "INSECURE")
        target = _endpoint(env, protocol, insecure)
        api_key = env.get("OTEL_AGENTS_API_KEY")
        config = cls(
            endpoint=target.url,
            protocol=protocol,
            endpoint_source=target.source,
            tls_implied=target.tls_implied,
            insecure=insecure,
            headers=env.headers(_M + "HEADERS", _G + "HEADERS"),
            api_key=check_api_key(api_key[1], api_key[0]) if api_key else None,
            certificate_file=env.value(_M + "CERTIFICATE", _G + "CERTIFICATE"),
            client_certificate_file=env.value(_M + "CLIENT_CERTIFICATE", _G + "CLIENT_CERTIFICATE"),
            client_key_file=env.value(_M + "CLIENT_KEY", _G + "CLIENT_KEY"),
            compression=env.choice(
                _M + "COMPRESSION", _G + "COMPRESSION", options=("gzip", "none"), default="gzip"
            ),
            timeout_s=env.milliseconds(
                _M + "TIMEOUT", _G + "TIMEOUT", default_ms=10_000.0, zero_is_no_limit=True
            )
            / 1000.0,
            export_interval_ms=env.milliseconds(
                "OTEL_METRIC_EXPORT_INTERVAL",
                default_ms=30_000.0,
                zero_is_no_limit=False,
                minimum_ms=MIN_EXPORT_INTERVAL_MS,
            ),
            export_timeout_ms=env.milliseconds(
                "OTEL_METRIC_EXPORT_TIMEOUT", default_ms=30_000.0, zero_is_no_limit=True
            ),
            histogram_aggregation=env.choice(
                _M + "DEFAULT_HISTOGRAM_AGGREGATION",
                options=("explicit_bucket_histogram", "base2_exponential_bucket_histogram"),
                default="explicit_bucket_histogram",
            ),
            exemplar_filter=env.choice(
                "OTEL_METRICS_EXEMPLAR_FILTER",
                options=("trace_based", "always_on", "always_off"),
                default="trace_based",
            ),
            exporter_enabled=_exporter_enabled(env),
            shutdown_timeout_s=env.seconds(
                "OTEL_AGENTS_SHUTDOWN_TIMEOUT", default_s=5.0, maximum_s=MAX_SHUTDOWN_TIMEOUT_S
            ),
            service_name=env.value("OTEL_SERVICE_NAME"),
            resource_attributes=env.resource_attributes("OTEL_RESOURCE_ATTRIBUTES"),
            sdk_disabled=env.boolean("OTEL_SDK_DISABLED"),
            handle_sigterm=env.boolean("OTEL_AGENTS_HANDLE_SIGTERM", default=True),
            task_detail=env.boolean("OTEL_AGENTS_TASK_DETAIL"),
        )
        _check_temporality(env)
        _check_client_certificate(env, config)
        return replace(config, warnings=tuple(env.warnings))

    @property
    def use_tls(self) -> bool:
        """True when the connection to the gateway is encrypted."""
        return self.endpoint.startswith("https://")

    @property
    def target(self) -> Endpoint:
        """The endpoint with how it was configured."""
        return Endpoint(self.endpoint, self.endpoint_source, self.endpoint, self.tls_implied)

    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        """Headers to send on every export; the API key, if set, is the authorization."""
        if self.api_key is None:
            return self.headers
        rest = tuple((k, v) for k, v in self.headers if k != "authorization")
        return (("authorization", f"Bearer {self.api_key}"), *rest)

    def with_endpoint(self, endpoint: str) -> AgentConfig:
        """A copy exporting to `endpoint` (same rules as the variable; for OTLP/HTTP,
        ``/v1/metrics`` is appended to an endpoint with no path)."""
        warnings: list[str] = []
        try:
            target = argument_endpoint(
                endpoint, self.protocol, insecure=self.insecure, warn=warnings.append
            )
        except EndpointError as exc:
            raise ConfigError(str(exc)) from exc
        return replace(
            self,
            endpoint=target.url,
            endpoint_source=target.source,
            tls_implied=target.tls_implied,
            warnings=(*self.warnings, *warnings),
        )

    def with_api_key(self, api_key: str) -> AgentConfig:
        """A copy authenticating with `api_key`."""
        return replace(self, api_key=check_api_key(api_key, "api_key argument"))


def check_api_key(value: str, source: str) -> str:
    """Return the key stripped, or raise `ConfigError` (never echoing the key)."""
    key = value.strip()
    if not _API_KEY.fullmatch(key):
        raise ConfigError(
            f"{source} is empty or contains spaces, control or non-ASCII characters, which a "
            "gRPC or HTTP header cannot carry; set it to the key exactly as issued"
        )
    return key


def _protocol(env: EnvReader) -> Protocol:
    found = env.get(_M + "PROTOCOL", _G + "PROTOCOL")
    if found is not None and found[1].lower() == "http/json":
        env.warn(
            f"{found[0]}=http/json is not supported here; using http/protobuf, which the "
            "gateway takes at the same URL: write http/protobuf"
        )
        return "http/protobuf"
    return env.choice(_M + "PROTOCOL", _G + "PROTOCOL", options=PROTOCOLS, default="grpc")


def _endpoint(env: EnvReader, protocol: Protocol, insecure: bool) -> Endpoint:
    specific = env.get(_M + "ENDPOINT")
    generic = env.get(_G + "ENDPOINT")
    try:
        if protocol == "grpc":
            found = specific or generic
            if found is None:
                return Endpoint(DEFAULT_GRPC_ENDPOINT, "default", DEFAULT_GRPC_ENDPOINT)
            return grpc_endpoint(found[1], found[0], insecure=insecure, warn=env.warn)
        if specific is not None:
            return http_endpoint(
                specific[1], specific[0], append_path=False, insecure=insecure, warn=env.warn
            )
        if generic is not None:
            return http_endpoint(
                generic[1], generic[0], append_path=True, insecure=insecure, warn=env.warn
            )
        return Endpoint(DEFAULT_HTTP_ENDPOINT, "default", DEFAULT_HTTP_ENDPOINT)
    except EndpointError as exc:
        raise ConfigError(str(exc)) from exc


def _exporter_enabled(env: EnvReader) -> bool:
    found = env.get("OTEL_METRICS_EXPORTER")
    if found is None:
        return True
    name, raw = found
    chosen = {item.strip().lower() for item in raw.split(",") if item.strip()}
    if chosen == {"none"}:
        return False
    if chosen != {"otlp"}:
        env.warn(
            f"{name}={raw!r}: this library exports OTLP to the gateway only; exporting OTLP. "
            "Write otlp, or none to turn metrics off"
        )
    return True


def _check_temporality(env: EnvReader) -> None:
    """Counters stay cumulative whatever is asked: totals then survive a gateway outage."""
    found = env.get(_M + "TEMPORALITY_PREFERENCE")
    if found is None:
        return
    name, raw = found
    if raw.lower() == "cumulative":
        return
    if raw.lower() in ("delta", "lowmemory"):
        env.warn(
            f"{name}={raw} is not used: these agents export cumulative totals, which survive a "
            "gateway outage (with delta, a 2-minute outage lost 78 % of counts); unset it"
        )
    else:
        env.warn(
            f"{name}={raw!r} is not one of cumulative, delta, lowmemory; exporting cumulative "
            "totals (the only temporality used here): unset it"
        )


def _check_client_certificate(env: EnvReader, config: AgentConfig) -> None:
    certificate, key = config.client_certificate_file, config.client_key_file
    if bool(certificate) != bool(key):
        given, missing = (
            ("CLIENT_CERTIFICATE", "CLIENT_KEY")
            if certificate
            else (
                "CLIENT_KEY",
                "CLIENT_CERTIFICATE",
            )
        )
        env.warn(
            f"{_G}{given} is set but {_G}{missing} is not: no client certificate is sent; "
            "set both (or their _METRICS_ forms) for mutual TLS"
        )
    elif certificate and not config.use_tls:
        env.warn(
            f"{_G}CLIENT_CERTIFICATE is set but the endpoint {config.endpoint} is plaintext, so "
            "no client certificate is sent; use https:// for mutual TLS"
        )
