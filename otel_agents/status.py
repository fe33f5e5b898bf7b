"""Gauges every agent reports about itself: uptime and connection state.

Read at collection time by observable instruments, so the host pays nothing
between exports. The agent's version is not a gauge of its own: it travels as
`service.version` on the resource, which Prometheus shows as `service_version` on
`target_info` and the gateway as `version` on its last-seen series; an info gauge
would repeat it at the cost of one series per agent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from otel_agents import names
from otel_agents.forks import reset_in_children


class AgentStatus:
    """`<prefix>.uptime` (s) and `<prefix>.connected` (0/1), `prefix` `connector` or
    `agent` (otel_agents.names.STATUS: `connector_uptime_seconds` and
    `connector_connected` in Prometheus, or the `agent_` ones).
    """

    def __init__(
        self,
        meter: Meter,
        prefix: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._started = clock()
        self._connected: bool | None = None
        uptime, connected = names.STATUS[prefix]
        reset_in_children(self)
        meter.create_observable_gauge(
            uptime.name,
            callbacks=[self._observe_uptime],
            unit=uptime.unit,
            description=f"Seconds since the {prefix} started.",
        )
        # No unit: unit "1" would add a `_ratio` suffix to the Prometheus name.
        meter.create_observable_gauge(
            connected.name,
            callbacks=[self._observe_connected],
            unit=connected.unit,
            description=f"1 while the {prefix} is connected to its upstream, else 0.",
        )

    def after_fork_in_child(self) -> None:
        """A forked child is up since the fork (otel_agents.forks)."""
        self._started = self._clock()

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
