"""`agent_connected` for a data agent: can it reach its Prefect API?

Where this sits: Prefect API ◀──(*probe*, a daemon thread)── data agent ──▶ EtlMetrics.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from otel_agents.signals import signals_blocked

_logger = logging.getLogger(__name__)


def prefect_api_healthy() -> bool | None:
    """True if the configured Prefect API answers its health check; None if none is set."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return None  # ephemeral mode: there is no server to be connected to
    with get_client(sync_client=True) as client:
        return client.api_healthcheck() is None


class ApiProbe:
    """Calls `report(healthy)` every `interval_s` from a daemon thread."""

    def __init__(
        self,
        report: Callable[[bool], None],
        interval_s: float,
        check: Callable[[], bool | None] = prefect_api_healthy,
    ) -> None:
        """Probe with `check` (default: the Prefect API's /health)."""
        self._report = report
        self._interval_s = interval_s
        self._check = check
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="otel-agents-probe", daemon=True)

    def start(self) -> None:
        """Start probing (the first check runs at once)."""
        with signals_blocked():  # the host's signals stay with its main thread
            self._thread.start()

    def stop(self) -> None:
        """Stop after the current check."""
        self._stop.set()

    def check_once(self) -> None:
        """One check; a failing check reports False, never raises."""
        try:
            healthy = self._check()
        except Exception as exc:
            _logger.debug("otel_agents: Prefect API health check failed: %s", exc)
            healthy = False
        if healthy is not None:
            self._report(healthy)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            self._stop.wait(self._interval_s)
