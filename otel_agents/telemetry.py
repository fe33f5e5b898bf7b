"""The handle an agent keeps after `setup_metrics`: its meter, flush, bounded shutdown.

Where this sits: agent code ──(otel_agents: *handle*)──▶ OTLP/gRPC ──▶ gateway.

The SDK's flush and shutdown export synchronously and retry for seconds when the gateway
is down (shutdown blocked 6-7 s in measurements). A library must not hold its host that
long, so both run in a daemon thread that the caller waits for only up to a deadline.
The final export runs once, whoever asks for it (the host, the exit hook, the SIGTERM
handler of `otel_agents.signals`), and no one waits for it holding a lock it needs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from opentelemetry.metrics import Meter, MeterProvider, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider

from otel_agents import names
from otel_agents.config import MAX_SHUTDOWN_TIMEOUT_S, AgentConfig
from otel_agents.identity import release_instance_id
from otel_agents.lifecycle import StopAnnouncingExporter, exited_cleanly
from otel_agents.signals import signals_blocked

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
        exporter: StopAnnouncingExporter | None = None,
        config: AgentConfig | None = None,
        service_version: str | None = None,
        instance_id: str | None = None,
    ) -> None:
        """Wrap a provider; `sdk_provider` is None when metrics are disabled.

        `exporter` makes the final export of a clean shutdown say "stopped" and tells
        whether it arrived; `config` is the settings the provider was built from
        (defaults if None); `instance_id` (the resource's) is given back at shutdown, for a later
        `setup_metrics` of the same service in this process.
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
        self._exporter = exporter
        self._final: dict[str, _BoundedCall] = {}  # at most one entry: the final export
        self._warned: set[str] = set()
        self.instance_id = instance_id
        """The resource's `service.instance.id`: the agent's `instance` in the fleet."""

    @classmethod
    def disabled(cls) -> AgentTelemetry:
        """Telemetry whose instruments do nothing (metrics off or misconfigured)."""
        return cls(NoOpMeterProvider(), sdk_provider=None, shutdown_timeout_s=0.0)

    @property
    def enabled(self) -> bool:
        """True when measurements are collected and exported."""
        return self._sdk is not None

    def force_flush(self, timeout_s: float | None = None) -> bool:
        """Export now; False if that failed or did not finish within `timeout_s`
        (at most `MAX_SHUTDOWN_TIMEOUT_S`)."""
        sdk = self._sdk
        if sdk is None:
            return True
        budget = self._budget(timeout_s, "force_flush")
        exporter = self._exporter
        # The SDK's flush returns True whatever the export's result: ask the exporter.
        flush = _BoundedCall(
            lambda: sdk.force_flush(timeout_millis=budget * 1000 * _SDK_SHARE),
            budget,
            "flush",
            arrived=exporter.final_export_arrived if exporter is not None else None,
        )
        flush.start()
        return flush.wait()

    def shutdown(self, timeout_s: float | None = None, *, clean: bool = True) -> bool:
        """Export what is left and stop, returning within `timeout_s` (default from config,
        at most `MAX_SHUTDOWN_TIMEOUT_S`).

        With `clean` (the default) the final export tells the gateway this agent
        stopped on purpose, so it is shown as stopped and not alerted on as silent.
        True when the final export arrived (or there was nothing to send); False, with
        one warning, when it failed or did not finish in time. The final export runs
        once, on its own thread: later or concurrent calls (another thread, a signal
        handler, the exit hook) wait for it until its deadline and return its result.
        """
        sdk = self._sdk
        if sdk is None:
            return True
        exporter = self._exporter
        budget = self._budget(timeout_s, "shutdown")

        def final_export() -> None:
            if clean and exporter is not None:
                exporter.announce_stop()
            sdk.shutdown(timeout_millis=budget * 1000 * _SDK_SHARE)

        candidate = _BoundedCall(
            final_export,
            budget,
            "shutdown",
            arrived=exporter.final_export_arrived if exporter is not None else None,
        )
        # No lock: a host's signal handler may call this while the thread it interrupted
        # is in here. dict.setdefault is atomic, so exactly one candidate is the final one.
        final = self._final.setdefault("final", candidate)
        final.start()
        if self.instance_id is not None:
            release_instance_id(self.instance_id)
        # The exit hook stays registered: when another thread started the final export,
        # it makes the interpreter wait for it instead of killing it mid-way.
        return final.wait()

    def at_exit(self) -> None:
        """The exit hook: final export; "stopped" unless an uncaught exception ends the
        process (a crash, which must page if the agent does not come back)."""
        try:
            self.shutdown(clean=exited_cleanly())
        except KeyboardInterrupt:  # a second Ctrl-C: the user does not want to wait
            _logger.warning("otel_agents: final export abandoned (interrupted at exit)")

    def _budget(self, timeout_s: object, what: str) -> float:
        """`timeout_s` as seconds to wait: the default for None or what is not a number,
        at most `MAX_SHUTDOWN_TIMEOUT_S` (`inf` included), 0 for a negative one."""
        if timeout_s is None:
            return self._shutdown_timeout_s
        number = timeout_s if isinstance(timeout_s, int | float) else math.nan
        if isinstance(timeout_s, bool) or math.isnan(number):
            self._warn_once(
                what,
                f"{what}(timeout_s={timeout_s!r}) is not a number of seconds; using "
                f"{self._shutdown_timeout_s:g} s: pass a number, or None for the default",
            )
            return self._shutdown_timeout_s
        if number > MAX_SHUTDOWN_TIMEOUT_S:
            self._warn_once(
                what,
                f"{what}(timeout_s={timeout_s!r}) waits at most {MAX_SHUTDOWN_TIMEOUT_S:g} s; "
                f"pass {MAX_SHUTDOWN_TIMEOUT_S:g} or less",
            )
            return MAX_SHUTDOWN_TIMEOUT_S
        return max(0.0, float(number))

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _logger.warning("otel_agents: %s (logged once)", message)


class _BoundedCall:
    """`action` on a daemon thread; any thread may wait for it, never past its deadline."""

    def __init__(
        self,
        action: Callable[[], object],
        timeout_s: float,
        what: str,
        *,
        arrived: Callable[[], bool] | None = None,
    ) -> None:
        self._action = action
        self._timeout_s = timeout_s
        self._what = what
        self._arrived = arrived
        self._done = threading.Event()
        self._succeeded = False
        self._deadline = time.monotonic() + timeout_s
        self._reported = False
        self._unstarted = threading.Lock()  # taken, never waited for, by the one starter

    def start(self) -> None:
        """Start the action; later calls do nothing. Its deadline runs from construction."""
        if not self._unstarted.acquire(blocking=False):
            return
        worker = threading.Thread(target=self._run, name=f"otel-agents-{self._what}", daemon=True)
        try:
            with signals_blocked():
                worker.start()
        except RuntimeError:
            # Python 3.12.0-3.12.1 refuse new threads in atexit hooks; the SDK's own
            # deadline (passed in the action) is then the only bound.
            self._run()

    def wait(self) -> bool:
        """True if the action succeeded before the deadline; logs one line if not."""
        self._done.wait(max(0.0, self._deadline - time.monotonic()))
        if not self._done.is_set():
            problem = f"did not finish within {self._timeout_s:.1f} s; gave up waiting"
        elif not self._succeeded:
            problem = "failed"
        elif self._arrived is not None and not self._arrived():
            problem = f"was refused or still unanswered after {self._timeout_s:.1f} s"
        else:
            return True
        if not self._reported:
            self._reported = True
            _logger.warning(
                "otel_agents: metrics %s %s%s (is the gateway reachable? opentelemetry's own "
                "log lines say more)",
                self._what,
                problem,
                " (the final export is lost)" if self._what == "shutdown" else "",
            )
        return False

    def _run(self) -> None:
        try:
            self._action()
            self._succeeded = True
        except Exception:  # the SDK raises a bare Exception when a reader fails
            _logger.debug("otel_agents: metrics %s raised", self._what, exc_info=True)
        finally:
            self._done.set()
