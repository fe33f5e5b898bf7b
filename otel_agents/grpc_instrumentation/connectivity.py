"""`connector_connected` kept in step with a gRPC channel's state."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import grpc.aio

from otel_agents.connector import ConnectorMetrics

# -- connection state ---------------------------------------------------------------------

_CONNECTED = {
    grpc.ChannelConnectivity.READY: True,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE: False,
    grpc.ChannelConnectivity.SHUTDOWN: False,
}


def watch_connectivity(
    channel: grpc.Channel, metrics: ConnectorMetrics, *, try_to_connect: bool = True
) -> Callable[[], None]:
    """Keep `connector_connected` in step with a sync channel; returns the unsubscriber.

    1 once the channel is READY, 0 on TRANSIENT_FAILURE or SHUTDOWN; IDLE and
    CONNECTING keep the last value. With `try_to_connect` the channel connects now and
    reconnects whenever it falls IDLE (the upstream closed the connection, or no call
    for `grpc.client_idle_timeout_ms`), so the gauge says whether the upstream is
    reachable, at the cost of keeping one connection open.
    """

    def nudge(state: grpc.ChannelConnectivity) -> None:
        """Subscribed for a moment: subscribing is the public way to ask for a connection."""

    def on_change(state: grpc.ChannelConnectivity) -> None:
        connected = _CONNECTED.get(state)
        if connected is not None:
            metrics.set_connected(connected)
        elif state is grpc.ChannelConnectivity.IDLE and try_to_connect:
            channel.subscribe(nudge, try_to_connect=True)
            channel.unsubscribe(nudge)

    channel.subscribe(on_change, try_to_connect=try_to_connect)
    return lambda: channel.unsubscribe(on_change)


async def watch_aio_connectivity(channel: grpc.aio.Channel, metrics: ConnectorMetrics) -> None:
    """The same for a grpc.aio channel (always reconnecting): run it as a task.

    It returns when the channel shuts down; cancel the task to stop earlier.
    """
    while True:
        state = channel.get_state(try_to_connect=True)
        connected = _CONNECTED.get(state)
        if connected is not None:
            metrics.set_connected(connected)
        if state is grpc.ChannelConnectivity.SHUTDOWN:
            return
        await channel.wait_for_state_change(state)
