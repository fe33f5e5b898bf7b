"""The only module that talks to the Collectors: OTLP/gRPC export with a deadline.

With several Collectors (`GATEWAY_COLLECTOR_ENDPOINT` lists them), `Collectors`
sends each agent's resources to its own one (gateway/shards.py), through one
`CollectorForwarder` per Collector.

Forwards are coalesced: while the Collector is answering one export, requests
that arrive queue up and leave together as one export. Serialized OTLP
requests concatenate into one valid request (`resource_metrics` is a repeated
field), so merging costs a bytes join, and a Python gRPC client call (~230 µs
of CPU, FACTS.md) is paid once per batch rather than once per request. Under
light load every request still leaves at once, alone.

gRPC failures are translated here, once, into the gateway's errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from gateway.errors import CollectorUnavailable, GatewayError, InvalidRequest
from gateway.shards import ShardMap

logger = logging.getLogger(__name__)


class _Sparse:
    """Logs a warning at most once per `seconds`, with the number held back since:
    a Collector outage refuses thousands of forwards, and the metrics count them."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._last = -seconds
        self._held = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.seconds:
            self._held += 1
            return
        if self._held:
            message += " (and %d more since the last such line)"
            args = (*args, self._held)
        self._last, self._held = now, 0
        logger.warning(message, *args)


_sparse = _Sparse()

# Forwards timing out in a row after which the connection is replaced: a
# connection the network dropped silently would otherwise stay in use until
# keepalive notices it (tens of seconds).
DEADLINES_BEFORE_RECONNECT = 2
KEEPALIVE_SECONDS = 10
KEEPALIVE_TIMEOUT_SECONDS = 5
EXPORT_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"

# Statuses after which the same request may succeed later: the client is told
# UNAVAILABLE, which every OTLP exporter retries.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)

_Outcome = asyncio.Future[ExportMetricsServiceResponse]


@dataclass
class _Batch:
    """Serialized requests waiting to leave as one export, and their callers."""

    bodies: list[bytes] = field(default_factory=list)
    waiters: list[_Outcome] = field(default_factory=list)
    size: int = 0
    ready: bool = False
    """Full, or its linger is over: it leaves as soon as an export slot is free."""
    created: float = field(default_factory=time.monotonic)
    """When its first request arrived: the forward deadline counts from then."""


class CollectorForwarder:
    """Forwards enriched requests to the Collector's OTLP/gRPC receiver.

    A request waits at most `linger_seconds` for others to join its export;
    an export leaves at once when it reaches `max_message_bytes`, and at most
    `max_concurrent_exports` are under way (more wait for one to end).
    """

    def __init__(
        self,
        endpoint: str,
        timeout_seconds: float,
        max_message_bytes: int,
        *,
        linger_seconds: float = 0.003,
        max_concurrent_exports: int = 4,
    ) -> None:
        self._endpoint = endpoint
        self._timeout = timeout_seconds
        self._max_message_bytes = max_message_bytes
        self._linger = linger_seconds
        self._max_concurrent = max_concurrent_exports
        self._channel: grpc.aio.Channel | None = None
        self._export: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] | None = None
        # Batches waiting to leave, oldest first; new requests join the last one.
        self._queue: deque[_Batch] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._exporting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._deadlines_in_a_row = 0
        self.exports = 0
        """Exports sent to the Collector so far (each carries one or more requests)."""

    def _method(self) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        # Created on first use: a grpc.aio channel belongs to the event loop
        # that is running when it is made.
        if self._export is None:
            self._channel = grpc.aio.insecure_channel(
                self._endpoint,
                options=[
                    ("grpc.max_send_message_length", self._max_message_bytes),
                    # Notice a restarted Collector within seconds, not gRPC's
                    # default of up to two minutes of back-off.
                    ("grpc.initial_reconnect_backoff_ms", 250),
                    ("grpc.max_reconnect_backoff_ms", 2000),
                    # A connection the network dropped without a word (no FIN,
                    # no RST) is found dead by pings and replaced; otherwise
                    # every forward would time out on it forever. The
                    # Collector's receiver permits these pings (config.yaml).
                    ("grpc.keepalive_time_ms", KEEPALIVE_SECONDS * 1000),
                    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_SECONDS * 1000),
                    ("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.max_pings_without_data", 0),
                    # Its own connections: channels share them process-wide by
                    # default, and a replaced channel would get the dead one back.
                    ("grpc.use_local_subchannel_pool", 1),
                ],
            )
            # Bytes in, bytes out: the requests are serialized once, by forward().
            self._export = self._channel.unary_unary(EXPORT_METHOD, None, None)
        return self._export

    async def forward(self, request: ExportMetricsServiceRequest) -> ExportMetricsServiceResponse:
        """Export `request`, alone or with others; raise CollectorUnavailable when it
        should be retried."""
        body = request.SerializeToString()
        loop = asyncio.get_running_loop()
        outcome: _Outcome = loop.create_future()
        if not self._queue or self._queue[-1].size + len(body) > self._max_message_bytes:
            if self._queue:
                self._queue[-1].ready = True  # full
            self._queue.append(_Batch())
        batch = self._queue[-1]
        batch.bodies.append(body)
        batch.waiters.append(outcome)
        batch.size += len(body)
        if self._timer is None and not batch.ready:
            self._timer = loop.call_later(self._linger, self._linger_over)
        self._start_exports()
        return await outcome

    def _linger_over(self) -> None:
        self._timer = None
        if self._queue:
            self._queue[-1].ready = True
        self._start_exports()

    def _start_exports(self) -> None:
        loop = asyncio.get_running_loop()
        # Batches before the last are full, hence ready: the first one decides.
        while self._queue and self._queue[0].ready and self._exporting < self._max_concurrent:
            self._exporting += 1
            task = loop.create_task(self._export_batch(self._queue.popleft()))
            # The loop keeps only weak references to tasks: hold them until done.
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _export_batch(self, batch: _Batch) -> None:
        try:
            await self._deliver(batch)
        finally:
            self._exporting -= 1
            self._start_exports()  # a batch that became ready meanwhile

    async def _deliver(self, batch: _Batch) -> None:
        # The deadline counts from the first request's arrival: time spent
        # waiting for a free export slot is part of it.
        remaining = self._timeout - (time.monotonic() - batch.created)
        if remaining <= 0:
            for waiter in batch.waiters:
                _settle(waiter, error=_waited_too_long(self._timeout))
            return
        self.exports += 1
        try:
            answer = await self._method()(b"".join(batch.bodies), timeout=remaining)
        except grpc.aio.AioRpcError as exc:
            self._note_deadline(exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED)
            error = _translate(exc)
            if len(batch.bodies) > 1 and not isinstance(error, CollectorUnavailable):
                # One bad request must not fail the others: each goes again alone.
                for body, waiter in zip(batch.bodies, batch.waiters, strict=True):
                    await self._deliver(_Batch([body], [waiter], len(body)))
                return
            for waiter in batch.waiters:
                _settle(waiter, error=error)
            return
        except Exception as exc:
            # Anything else (a closed channel, say) fails this batch's callers,
            # never the loop that serves the queue.
            logger.exception("forwarding to the collector failed")
            for waiter in batch.waiters:
                _settle(waiter, error=GatewayError(f"forwarding failed: {exc!r}"))
            return
        self._note_deadline(False)
        response = ExportMetricsServiceResponse.FromString(answer)
        if len(batch.waiters) > 1 and response.HasField("partial_success"):
            # Not attributable to one request of the batch: each caller hears the
            # Collector's message, none a count that may not be theirs.
            response.partial_success.rejected_data_points = 0
        for waiter in batch.waiters:
            _settle(waiter, response=response)

    def _note_deadline(self, timed_out: bool) -> None:
        self._deadlines_in_a_row = self._deadlines_in_a_row + 1 if timed_out else 0
        if self._deadlines_in_a_row < DEADLINES_BEFORE_RECONNECT or self._channel is None:
            return
        _sparse.warning(
            "%d forwards to %s timed out in a row: opening a new connection",
            self._deadlines_in_a_row,
            self._endpoint,
        )
        self._deadlines_in_a_row = 0
        old, self._channel, self._export = self._channel, None, None
        # Calls still under way on the old connection end by their own deadline
        # within the grace period; none is cancelled.
        task = asyncio.get_running_loop().create_task(old.close(grace=self._timeout + 1))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def is_ready(self, timeout_seconds: float = 1.0) -> bool:
        """True when the Collector answers an empty export within the timeout."""
        try:
            await self._method()(b"", timeout=timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            logger.debug("collector at %s not ready: %s", self._endpoint, exc.code())
            return False
        return True

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = self._export = None


class Collectors:
    """Several Collectors as one forwarder: each agent's resources go to the
    Collector `ShardMap` picks for it, always the same one while the list is."""

    def __init__(self, forwarders: dict[str, CollectorForwarder]) -> None:
        """`forwarders` by Collector address."""
        self.shards = ShardMap(list(forwarders))
        self._forwarders = list(forwarders.values())

    @classmethod
    def connect(
        cls,
        endpoints: tuple[str, ...],
        timeout_seconds: float,
        max_message_bytes: int,
        *,
        linger_seconds: float = 0.003,
    ) -> Collectors:
        """One forwarder per address, with the same settings."""
        return cls(
            {
                endpoint: CollectorForwarder(
                    endpoint, timeout_seconds, max_message_bytes, linger_seconds=linger_seconds
                )
                for endpoint in endpoints
            }
        )

    @property
    def exports(self) -> int:
        """Exports sent to the Collectors so far."""
        return sum(forwarder.exports for forwarder in self._forwarders)

    async def forward(self, request: ExportMetricsServiceRequest) -> ExportMetricsServiceResponse:
        """Export each part of `request` to its Collector. When one part fails, the
        request fails (the client retries all of it: cumulative values sent twice
        are the same values)."""
        parts = self.shards.split(request)
        if len(parts) == 1:
            [(shard, part)] = parts.items()
            return await self._forwarders[shard].forward(part)
        answers = await asyncio.gather(
            *(self._forwarders[shard].forward(part) for shard, part in parts.items()),
            return_exceptions=True,
        )
        merged = ExportMetricsServiceResponse()
        messages = []
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            merged.partial_success.rejected_data_points += (
                answer.partial_success.rejected_data_points
            )
            if answer.partial_success.error_message:
                messages.append(answer.partial_success.error_message)
        merged.partial_success.error_message = "; ".join(messages)
        if not merged.partial_success.rejected_data_points and not messages:
            merged.ClearField("partial_success")
        return merged

    async def is_ready(self, timeout_seconds: float = 1.0) -> bool:
        """True when every Collector answers."""
        answers = await asyncio.gather(
            *(forwarder.is_ready(timeout_seconds) for forwarder in self._forwarders)
        )
        return all(answers)

    async def close(self) -> None:
        """Close every channel."""
        for forwarder in self._forwarders:
            await forwarder.close()


def _settle(
    waiter: _Outcome,
    *,
    response: ExportMetricsServiceResponse | None = None,
    error: GatewayError | None = None,
) -> None:
    if waiter.done():  # its caller went away (cancelled)
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        copy = ExportMetricsServiceResponse()
        if response is not None:
            copy.CopyFrom(response)
        waiter.set_result(copy)


def _waited_too_long(timeout: float) -> GatewayError:
    _sparse.warning("requests waited %g s for an export slot: the collector is slow", timeout)
    return CollectorUnavailable(
        f"the metrics backend is slow: no answer within {timeout:g} s "
        "(forward_timeout_seconds); the request was not stored, retry later"
    )


def _translate(exc: grpc.aio.AioRpcError) -> GatewayError:
    code = exc.code()
    if code in _TRANSIENT:
        _sparse.warning("collector refused a forward: %s %s", code.name, exc.details())
        return CollectorUnavailable(
            f"the metrics backend is unavailable ({code.name}); the request was not stored, "
            "retry later"
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(f"the metrics backend rejected the request: {exc.details()}")
    logger.error("collector failed a forward: %s %s", code.name, exc.details())
    return GatewayError(f"the metrics backend failed ({code.name})")
