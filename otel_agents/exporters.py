"""The OTLP exporter `setup_metrics` uses: OTLP/gRPC or OTLP/HTTP, built from `AgentConfig` only.

Where this sits: agent code ──(otel_agents: *exporter*)──▶ OTLP/gRPC or OTLP/HTTP ──▶ gateway.

Both SDK exporters also read OTEL_EXPORTER_OTLP_* from os.environ in their constructors,
whatever they are given: the gRPC one raises on an OTEL_EXPORTER_OTLP_METRICS_TIMEOUT
that is empty or not a number, and both log their own warnings for values the settings
already reported. Construction therefore runs in `_constructing`, which hides the first
and silences the repeats; the MeterProvider, which raises on an exemplar filter it does
not know, gets it from `exemplar_filter`. TLS files are read here, so that an
unreadable one is one clear error instead of a failure at every export.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    Counter,
    ExemplarFilter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    TraceBasedExemplarFilter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.metrics.view import (
    Aggregation,
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
)

from otel_agents.certificate import read_regular_file
from otel_agents.config import AgentConfig, ConfigError
from otel_agents.overflow import OverflowWarning
from otel_agents.tlsprobe import probe_tls

_logger = logging.getLogger(__name__)

MAX_POINTS_PER_REQUEST = 1000
"""Data points per OTLP request. Even a histogram point with several attributes stays
under ~2 KiB, so a request stays far below gRPC's 4 MiB limit, which would otherwise be
refused RESOURCE_EXHAUSTED and retried in vain."""

# Cumulative totals survive a gateway outage (the next export carries them); delta
# lost 78 % of counts in a 2-minute outage. Explicit, so that
# OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE cannot switch it.
CUMULATIVE: dict[type, AggregationTemporality] = {
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

_METRICS_TIMEOUT = "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"
# A CA bundle is a few hundred KiB (the system's is ~220 KiB).
_MAX_TLS_FILE_BYTES = 16 << 20
# Loggers through which the SDK repeats what the settings reported, and its messages.
_REPEATS = {
    "opentelemetry.exporter.otlp.common._aggregation": ("Invalid value for %s",),
    "opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder": (
        "Unrecognized OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        "Invalid value for %s",
    ),
    "opentelemetry.util.re": ("Header format invalid!",),
}
# Reentrant: the meter provider is built around the exporter's construction.
_constructing_lock = threading.RLock()


def build_exporter(config: AgentConfig) -> MetricExporter:
    """The exporter for `config.protocol`; `ConfigError` if a TLS file cannot be read."""
    root, key, chain = _tls_files(config)
    # An export may take no longer than either timeout allows.
    timeout_s = min(config.timeout_s, config.export_timeout_ms / 1000)
    aggregation: dict[type, Aggregation] = {
        Histogram: ExponentialBucketHistogramAggregation()
        if config.histogram_aggregation == "base2_exponential_bucket_histogram"
        else ExplicitBucketHistogramAggregation()
    }
    with _constructing(config.protocol):
        if config.protocol == "grpc":
            exporter = _grpc_exporter(config, timeout_s, aggregation, root, key, chain)
        else:
            exporter = _http_exporter(config, timeout_s, aggregation, key is not None)
    return OverflowWarning(TlsMismatchHint(exporter, config))


def _grpc_exporter(
    config: AgentConfig,
    timeout_s: float,
    aggregation: dict[type, Aggregation],
    root: bytes | None,
    key: bytes | None,
    chain: bytes | None,
) -> MetricExporter:
    # Imported here so that `import otel_agents` stays cheap for hosts that never export.
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    credentials = None
    if config.use_tls:
        # Built here so the exporter does not fall back to reading os.environ.
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key, certificate_chain=chain
        )
    return OTLPMetricExporter(
        endpoint=config.endpoint,
        insecure=not config.use_tls,
        credentials=credentials,
        # Header keys are lower-cased by the config: an upper-case key fails every export.
        headers=config.grpc_metadata(),
        timeout=timeout_s,
        compression=grpc.Compression.Gzip
        if config.compression == "gzip"
        else grpc.Compression.NoCompression,
        preferred_temporality=dict(CUMULATIVE),
        preferred_aggregation=aggregation,
        max_export_batch_size=MAX_POINTS_PER_REQUEST,
    )


def _http_exporter(
    config: AgentConfig,
    timeout_s: float,
    aggregation: dict[type, Aggregation],
    client_certificate: bool,
) -> MetricExporter:
    from opentelemetry.exporter.http.transport._requests import RequestsHTTPTransport
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    # Our own transport: the exporter would otherwise take CA and client certificate
    # files from os.environ when they are not given (a lone client certificate, say).
    cert = (
        (config.client_certificate_file, config.client_key_file)
        if client_certificate and config.client_certificate_file and config.client_key_file
        else None
    )
    transport = RequestsHTTPTransport(
        verify=config.certificate_file or True, cert=cert, session=_session()
    )
    return OTLPMetricExporter(
        endpoint=config.endpoint,
        headers=dict(config.grpc_metadata()),
        timeout=timeout_s,
        compression=Compression.Gzip if config.compression == "gzip" else Compression.NoCompression,
        preferred_temporality=dict(CUMULATIVE),
        preferred_aggregation=aggregation,
        max_export_batch_size=MAX_POINTS_PER_REQUEST,
        _transport=transport,
    )


def _session() -> Any:
    import requests

    class CaFileSession(requests.Session):
        """requests lets REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE replace a session's own CA
        file; given with each request, the configured file wins. Proxy variables
        (HTTPS_PROXY, NO_PROXY) still apply."""

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            kwargs.setdefault("verify", self.verify)
            return super().request(method, url, *args, **kwargs)

    return CaFileSession()


def _tls_files(config: AgentConfig) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(CA, client key, client certificate) as PEM bytes; None where not used."""
    if not config.use_tls:
        return None, None, None
    root = _read(
        config.certificate_file, "CERTIFICATE", "the CA that signed the gateway's certificate"
    )
    key = chain = None
    if config.client_certificate_file and config.client_key_file:
        key = _read(config.client_key_file, "CLIENT_KEY", "this agent's private key")
        chain = _read(
            config.client_certificate_file, "CLIENT_CERTIFICATE", "this agent's certificate"
        )
    return root, key, chain


def _read(path: str | None, variable: str, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return read_regular_file(path, _MAX_TLS_FILE_BYTES)
    except OSError as exc:
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_(METRICS_){variable}: cannot read {path!r} ({exc.strerror}); "
            f"point it to the PEM file of {what}"
        ) from exc


@contextlib.contextmanager
def _constructing(protocol: str) -> Iterator[None]:
    """Build an SDK exporter without its own reads of os.environ failing or repeating."""
    filters = [(logging.getLogger(name), _DropRepeat(text)) for name, text in _REPEATS.items()]
    with _constructing_lock, contextlib.ExitStack() as stack:
        for logger, repeat in filters:
            logger.addFilter(repeat)
            stack.callback(logger.removeFilter, repeat)
        if protocol == "grpc":
            module: Any = importlib.import_module(
                "opentelemetry.exporter.otlp.proto.grpc.metric_exporter"
            )
            original = module.environ
            if not _is_number(original.get(_METRICS_TIMEOUT)):
                module.environ = {k: v for k, v in original.items() if k != _METRICS_TIMEOUT}
                stack.callback(setattr, module, "environ", original)
        yield


def exemplar_filter(config: AgentConfig) -> ExemplarFilter:
    """The exemplar filter `config` names, built here: the SDK's MeterProvider reads
    OTEL_METRICS_EXEMPLAR_FILTER itself only when given none, case-sensitively, and
    raises on a value it does not know (`ALWAYS_ON` included)."""
    filters: dict[str, ExemplarFilter] = {
        "always_on": AlwaysOnExemplarFilter(),
        "always_off": AlwaysOffExemplarFilter(),
    }
    return filters.get(config.exemplar_filter) or TraceBasedExemplarFilter()


def _is_number(value: str | None) -> bool:
    if value is None:
        return True
    try:
        float(value)
    except ValueError:
        return False
    return True


class _DropRepeat(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self._prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._prefixes)


class TlsMismatchHint(MetricExporter):
    """Passes exports through; after the first failure, says once if TLS is the cause.

    A bare ``host:port`` means TLS (OTLP specification), and the exporters' own errors
    for a plaintext gateway (handshake failures, retried every interval) do not say so.
    """

    def __init__(self, inner: MetricExporter, config: AgentConfig) -> None:
        """Wrap `inner`, which exports as `config` says."""
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self._config = config
        self._checked = False

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Export through the inner exporter; explain a TLS mismatch after the first failure."""
        result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        if result is not MetricExportResult.SUCCESS and not self._checked:
            self._checked = True
            try:
                hint = tls_mismatch_hint(self._config)
            except Exception:  # a hint must never break exporting
                _logger.debug("otel_agents: TLS probe failed", exc_info=True)
                hint = None
            if hint:
                _logger.warning("otel_agents: exports fail: %s", hint)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Flush the inner exporter."""
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Shut the inner exporter down."""
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def tls_mismatch_hint(config: AgentConfig) -> str | None:
    """What to change when the endpoint's TLS setting disagrees with the server, else None."""
    target = config.target
    host, port = target.host_port
    probe = probe_tls(host, port, config.certificate_file, timeout_s=3.0)
    plaintext_url = config.endpoint.replace("https://", "http://", 1)
    if config.use_tls and probe.verdict == "plaintext":
        if config.tls_implied:
            return (
                f"{config.endpoint_source} gives {host}:{port} with no scheme, which means TLS "
                f"(OTLP specification), but {host}:{port} does not speak TLS ({probe.detail}); "
                f"for a plaintext gateway write {plaintext_url}"
            )
        return (
            f"{config.endpoint_source} is https:// but {host}:{port} does not speak TLS "
            f"({probe.detail}); for a plaintext gateway write {plaintext_url}"
        )
    if config.use_tls and probe.verdict == "untrusted":
        return (
            f"{host}:{port} speaks TLS but {probe.detail}; set OTEL_EXPORTER_OTLP_CERTIFICATE "
            "to the PEM file of the CA that signed the gateway's certificate"
        )
    if not config.use_tls and probe.speaks_tls:
        return (
            f"{config.endpoint_source} is plaintext (http://) but {host}:{port} speaks TLS; "
            f"write {config.endpoint.replace('http://', 'https://', 1)}"
        )
    return None
