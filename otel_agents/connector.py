"""Connector metrics: what a Data Connector sends, the queries it serves, its errors.

Where this sits: connector code ──(otel_agents: *instruments*)──▶ OTLP/gRPC ──▶ gateway.
Through the Collector's prometheus exporter (UnderscoreEscapingWithSuffixes) these become
`connector_bytes_sent_total`, `connector_records_sent_total`,
`connector_queries_processed_total`, `connector_errors_total{error_type}`,
`connector_uptime_seconds`, `connector_connected` and
`connector_certificate_expiry_days`; the gateway adds `tenant_id` to each.

Series budget: at most 9 of these (3 of them `connector_errors_total`, one per
`error_type` in `ERROR_TYPES`), plus `target_info` and the gateway's 2 last-seen series:
12 per connector (docs/agents.md, "Series per agent").

Counting is on the host's hot path, so it only adds to plain ints (~0.2 µs a batch
instead of ~7 µs for two SDK `Counter.add`); observable counters read the totals at
collection time. A lock makes each addition atomic: Python does not promise that
`x += n` is (it is several bytecodes, and free-threaded builds have no GIL). Uncontended
the lock costs ~0.15 µs, and it stays simpler than per-thread cells, whose list would
grow with every thread a host ever starts. Totals are exact, cumulative and never
reset, as the exporter's cumulative temporality expects.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from otel_agents import names
from otel_agents.certificate import CertificateFile
from otel_agents.status import AgentStatus
from otel_agents.telemetry import AgentTelemetry

_logger = logging.getLogger(__name__)

ERROR_TYPES = ("unavailable", "rejected", "failed")
"""The values of `error_type`, one series each (a fixed set keeps the budget):

- `unavailable`: the upstream or the network is down or slow; retrying may work
  (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, ABORTED, RESOURCE_EXHAUSTED, timeouts and
  connection errors);
- `rejected`: the upstream refused the request as it is; retrying will not help
  (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
  FAILED_PRECONDITION, OUT_OF_RANGE, UNIMPLEMENTED);
- `failed`: anything else (INTERNAL, UNKNOWN, DATA_LOSS, other exceptions).

The exact status code is in the connector's own log.
"""
_UNAVAILABLE = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "ABORTED", "RESOURCE_EXHAUSTED"}
)
_REJECTED = frozenset(
    {
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
    }
)


def error_type_of(error: BaseException | str) -> str:
    """The `error_type` of an error: a gRPC status code (its name or an exception that
    carries one), an exception, or one of `ERROR_TYPES` itself."""
    if isinstance(error, str):
        name = error
    else:
        if isinstance(error, TimeoutError | ConnectionError):
            return "unavailable"
        name = _status_code_name(error) or ""
    if name in ERROR_TYPES:
        return name
    if name in _UNAVAILABLE:
        return "unavailable"
    if name in _REJECTED:
        return "rejected"
    return "failed"


def _status_code_name(error: BaseException) -> str | None:
    code = getattr(error, "code", None)
    if callable(code):
        try:
            name = getattr(code(), "name", None)
        except Exception:  # an unrelated `code()` method
            name = None
        if isinstance(name, str):
            return name
    return None


class ConnectorMetrics:
    """The instruments of a connector; prefer `connector_metrics(telemetry)` to build it.

    One instance per meter: the SDK keeps only the first callbacks registered under an
    instrument name, so the counts of a second instance on the same meter would be lost.
    """

    def __init__(
        self,
        meter: Meter,
        *,
        version: str | None = None,
        certificate_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Create the instruments on `meter` (usually `AgentTelemetry.meter`).

        `certificate_path` (a PEM file, read at each collection) adds
        `connector_certificate_expiry_days`. `version` is accepted so that existing calls
        keep working, and not reported here: the version Prometheus shows is
        `setup_metrics(service_version=)`, as `service_version` on `target_info`.
        """
        self.version = version
        """The version given (not reported; see above)."""
        self.certificate: CertificateFile | None = None
        """The watched certificate file, if one was given."""
        self._lock = threading.Lock()
        # All start at 0 so that Prometheus' increase() sees the first batch too.
        self._rows = 0
        self._bytes = 0
        self._queries = 0
        self._errors: dict[str, int] = {}
        self._rejected_logged = False
        _track_for_fork(self)

        meter.create_observable_counter(
            names.CONNECTOR_BYTES_SENT.name,
            callbacks=[self._observe_bytes],
            unit=names.CONNECTOR_BYTES_SENT.unit,
            description="Bytes of record data sent by the connector.",
        )
        meter.create_observable_counter(
            names.CONNECTOR_RECORDS_SENT.name,
            callbacks=[self._observe_rows],
            unit=names.CONNECTOR_RECORDS_SENT.unit,
            description="Records sent by the connector.",
        )
        meter.create_observable_counter(
            names.CONNECTOR_QUERIES_PROCESSED.name,
            callbacks=[self._observe_queries],
            unit=names.CONNECTOR_QUERIES_PROCESSED.unit,
            description="Queries (calls) the connector processed, whatever their outcome.",
        )
        meter.create_observable_counter(
            names.CONNECTOR_ERRORS.name,
            callbacks=[self._observe_errors],
            unit=names.CONNECTOR_ERRORS.unit,
            description="Failed queries and other errors, by error_type.",
        )
        self.status = AgentStatus(meter, "connector")
        """Uptime and connected gauges (`AgentStatus`)."""
        if certificate_path:
            self.certificate = CertificateFile(certificate_path)
            meter.create_observable_gauge(
                names.CONNECTOR_CERTIFICATE_EXPIRY.name,
                callbacks=[self._observe_certificate],
                unit=names.CONNECTOR_CERTIFICATE_EXPIRY.unit,
                description="Days until the connector's certificate expires "
                "(negative once expired).",
            )

    def record_batch(self, rows: int, nbytes: int) -> None:
        """Count one sent batch of `rows` records and `nbytes` bytes.

        Call it per batch, never per record. No attributes on purpose: the gateway
        stamps tenant_id on every point. Negative or non-numeric values are ignored
        with one warning.
        """
        try:
            if rows < 0 or nbytes < 0:
                raise ValueError("negative")
            with self._lock:
                self._rows += rows
                self._bytes += nbytes
        except (TypeError, ValueError):
            self._reject(rows, nbytes)

    def record_query(self) -> None:
        """Count one processed query (one call), whatever its outcome."""
        with self._lock:
            self._queries += 1

    def record_error(self, error_type: str | BaseException) -> None:
        """Count one error: a gRPC status code name ("UNAVAILABLE"), an exception, or one
        of `ERROR_TYPES`; it is counted under its `error_type` (see `ERROR_TYPES`)."""
        name = error_type_of(error_type)
        with self._lock:
            self._errors[name] = self._errors.get(name, 0) + 1

    def set_connected(self, connected: bool) -> None:
        """Record whether the connector is connected to its upstream (`connector_connected`)."""
        self.status.set_connected(connected)

    def _reject(self, rows: object, nbytes: object) -> None:
        if not self._rejected_logged:
            self._rejected_logged = True
            _logger.warning(
                "otel_agents: record_batch(rows=%r, nbytes=%r) ignored: both must be "
                "non-negative numbers (logged once)",
                rows,
                nbytes,
            )

    def _observe_bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._bytes)]

    def _observe_rows(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._rows)]

    def _observe_queries(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._queries)]

    def _observe_errors(self, options: CallbackOptions) -> Iterable[Observation]:
        # No lock: dict.copy() is one atomic step, and a collection must never wait for a
        # lock a host thread holds (a handler that waits for the final export in the very
        # frame that holds it would lose it).
        errors = self._errors.copy().items()
        return [Observation(count, {"error_type": name}) for name, count in errors]

    def _observe_certificate(self, options: CallbackOptions) -> Iterable[Observation]:
        days = self.certificate.days_left() if self.certificate is not None else None
        return [] if days is None else [Observation(days)]


# A fork while another thread holds one of these locks would leave it held forever in
# the child, and the child must not report its parent's totals; the hook is registered
# on first use (no side effects on import).
_live: weakref.WeakSet[ConnectorMetrics] = weakref.WeakSet()
_fork_hook_registered = False


def _track_for_fork(metrics: ConnectorMetrics) -> None:
    global _fork_hook_registered
    _live.add(metrics)
    if not _fork_hook_registered:
        _fork_hook_registered = True
        os.register_at_fork(after_in_child=_reset_after_fork)


def _reset_after_fork() -> None:
    global _by_meter_lock
    _by_meter_lock = threading.Lock()
    for metrics in list(_live):
        metrics._lock = threading.Lock()
        # A forked child is an agent of its own: it counts from zero (otel_agents.forks).
        metrics._rows = metrics._bytes = metrics._queries = 0
        metrics._errors = {}
        if metrics.certificate is not None:
            metrics.certificate._lock = threading.Lock()


_by_meter: weakref.WeakKeyDictionary[Meter, ConnectorMetrics] = weakref.WeakKeyDictionary()
_by_meter_lock = threading.Lock()


def connector_metrics(
    telemetry: AgentTelemetry,
    *,
    version: str | None = None,
    certificate_path: str | os.PathLike[str] | None = None,
) -> ConnectorMetrics:
    """The connector instruments of `telemetry` (no-ops when metrics are disabled).

    Every call with the same telemetry returns the same object; `certificate_path` is
    taken from the first call (a later, different one is ignored with a warning).
    `version` is accepted for existing callers and not reported: pass
    `service_version` to `setup_metrics`.
    """
    with _by_meter_lock:
        existing = _by_meter.get(telemetry.meter)
        if existing is None:
            existing = ConnectorMetrics(
                telemetry.meter, version=version, certificate_path=certificate_path
            )
            _by_meter[telemetry.meter] = existing
            return existing
    first_path = existing.certificate.path if existing.certificate else None
    asked_path = os.fspath(certificate_path) if certificate_path else None
    if asked_path and asked_path != first_path:
        _logger.warning(
            "otel_agents: connector_metrics was already called for this telemetry; "
            "the certificate_path of later calls is ignored (pass it on the first)"
        )
    return existing
