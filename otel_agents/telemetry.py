"""The handle an agent keeps after `setup_metrics`: its meter, flush, bounded shutdown.

Where this sits: agent code ──(otel_agents: *handle*)──▶ OTLP/gRPC ──▶ gateway.

The SDK's flush and shutdown export synchronously and retry for seconds when the gateway
is down (shutdown blocked 6-7 s in measurements). A library must not hold its host that
long, so both run in a daemon thread that the caller waits for only up to a deadline.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable

from opentelemetry.metrics import Meter, MeterProvider, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider

from otel_agents import names
from otel_agents.config import AgentConfig
from otel_agents.lifecycle import exited_cleanly

_logger = logging.getLogger(__name__)

METER_NAME = names.SCOPE
"""Instrumentation scope of the project's own instruments."""

# The SDK gets most of the budget so that its own deadline (which also aborts the
# exporter's retries) fires before ours and it can finish cleanly.
_SDK_SHARE = 0.9


class AgentTelemetry:
    """An agent's metrics: `.meter` for instruments, `.force_flush()`, `.shutdown()`."""

    def __init__(
        self,
        meter_provider: MeterProvider,
        *,
        sdk_provider: SdkMeterProvider | None,
        shutdown_timeout_s: float,
        announce_stop: Callable[[], None] | None = None,
        config: AgentConfig | None = None,
        service_version: str | None = None,
    ) -> None:
        """Wrap a provider; `sdk_provider` is None when metrics are disabled.

        `announce_stop` makes the final export of a clean shutdown say "stopped";
        `config` is the settings the provider was built from (defaults if None).
        """
        self.meter_provider: MeterProvider = meter_provider
        self.config: AgentConfig = config if config is not None else AgentConfig()
        """The settings read at start-up; the library's instruments take theirs from here."""
        self.service_version = service_version
        """The resource's `service.version`: the agent's version as Prometheus shows it."""
        # No scope version on purpose: the Collector puts it on every series as a
        # label, so upgrading the library would start new series.
        self.meter: Meter = meter_provider.get_meter(METER_NAME)
        self._sdk = sdk_provider
        self._shutdown_timeout_s = shutdown_timeout_s
        self._announce_stop = announce_stop
        self._lock = threading.Lock()
        self._shutdown_result: bool | None = None

    @classmethod
    def disabled(cls) -> AgentTelemetry:
        """Telemetry whose instruments do nothing (metrics off or misconfigured)."""
        return cls(NoOpMeterProvider(), sdk_provider=None, shutdown_timeout_s=0.0)

    @property
    def enabled(self) -> bool:
        """True when measurements are collected and exported."""
        return self._sdk is not None

    def force_flush(self, timeout_s: float | None = None) -> bool:
        """Export now; False if that failed or did not finish within `timeout_s`."""
        sdk = self._sdk
        if sdk is None:
            return True
        budget = self._budget(timeout_s)
        return _run_bounded(
            lambda: sdk.force_flush(timeout_millis=budget * 1000 * _SDK_SHARE), budget, "flush"
        )

    def shutdown(self, timeout_s: float | None = None, *, clean: bool = True) -> bool:
        """Export what is left and stop, returning within `timeout_s` (default from config).

        With `clean` (the default) the final export tells the gateway this agent
        stopped on purpose, so it is shown as stopped and not alerted on as silent.
        Idempotent: later calls return the first call's result. True means the SDK
        stopped in time, not that the last export arrived (the SDK does not say); False
        means it failed or was abandoned at the deadline.
        """
        with self._lock:
            if self._shutdown_result is not None:
                return self._shutdown_result
            sdk = self._sdk
            if sdk is None:
                self._shutdown_result = True
                return True
            if clean and self._announce_stop is not None:
                self._announce_stop()
            budget = self._budget(timeout_s)
            self._shutdown_result = _run_bounded(
                lambda: sdk.shutdown(timeout_millis=budget * 1000 * _SDK_SHARE), budget, "shutdown"
            )
            atexit.unregister(self.at_exit)
            return self._shutdown_result

    def at_exit(self) -> None:
        """The exit hook: final export; "stopped" unless an uncaught exception ends the
        process (a crash, which must page if the agent does not come back)."""
        self.shutdown(clean=exited_cleanly())

    def _budget(self, timeout_s: float | None) -> float:
        chosen = self._shutdown_timeout_s if timeout_s is None else timeout_s
        return max(0.0, chosen)


def _run_bounded(action: Callable[[], object], timeout_s: float, what: str) -> bool:
    """Run `action` in a daemon thread and wait at most `timeout_s`; True if it succeeded."""
    succeeded: list[bool] = []

    def run() -> None:
        try:
            action()
            succeeded.append(True)
        except Exception:  # the SDK raises a bare Exception when a reader fails
            _logger.warning("otel_agents: metrics %s failed", what, exc_info=True)
            succeeded.append(False)

    started = time.monotonic()
    worker = threading.Thread(target=run, name=f"otel-agents-{what}", daemon=True)
    try:
        worker.start()
    except RuntimeError:
        # Python 3.12.0-3.12.1 refuse new threads in atexit hooks; the SDK's own
        # deadline (passed in `action`) is then the only bound.
        run()
        return succeeded[0]
    worker.join(timeout_s)
    if worker.is_alive():
        _logger.warning(
            "otel_agents: metrics %s did not finish within %.1f s; gave up waiting "
            "(is the gateway reachable?)",
            what,
            time.monotonic() - started,
        )
        return False
    return succeeded[0]
