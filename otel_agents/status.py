"""Gauges every agent reports about itself: uptime, connection state, version.

Read at collection time by observable instruments, so the host pays nothing
between exports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation


class AgentStatus:
    """`<prefix>.uptime` (s), `<prefix>.connected` (0/1) and `<prefix>.info` {version}.

    With the prefix `connector` these become `connector_uptime_seconds`,
    `connector_connected` and `connector_info` in Prometheus.
    """

    def __init__(
        self,
        meter: Meter,
        prefix: str,
        version: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._started = clock()
        self._connected: bool | None = None
        self._version = version
        meter.create_observable_gauge(
            f"{prefix}.uptime",
            callbacks=[self._observe_uptime],
            unit="s",
            description=f"Seconds since the {prefix} started.",
        )
        # No unit: unit "1" would add a `_ratio` suffix to the Prometheus name.
        meter.create_observable_gauge(
            f"{prefix}.connected",
            callbacks=[self._observe_connected],
            description=f"1 while the {prefix} is connected to its upstream, else 0.",
        )
        if version:
            meter.create_observable_gauge(
                f"{prefix}.info",
                callbacks=[self._observe_info],
                description=f"Always 1; the {prefix}'s version in the `version` label.",
            )

    def set_connected(self, connected: bool) -> None:
        """Record the connection state (reported from the next collection on)."""
        self._connected = connected

    def _observe_uptime(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._clock() - self._started)]

    def _observe_connected(self, options: CallbackOptions) -> Iterable[Observation]:
        # Unknown until the agent says: an absent series, not a misleading 0.
        if self._connected is None:
            return []
        return [Observation(1 if self._connected else 0)]

    def _observe_info(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(1, {"version": self._version or ""})]
