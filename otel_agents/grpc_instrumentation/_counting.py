"""What the interceptors share: measuring messages and counting one call."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from otel_agents.connector import ConnectorMetrics

_logger = logging.getLogger(__name__)

Measure = Callable[[Any], int]
"""A function of one message giving a count (bytes or records)."""

if TYPE_CHECKING:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.StreamStreamClientInterceptor[Any, Any]
    _Server = grpc.ServerInterceptor[Any, Any]
    _AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _AioStreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _AioStreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
    _AioServer = grpc.aio.ServerInterceptor[Any, Any]
else:  # grpc's classes are not generic at run time
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.UnaryStreamClientInterceptor
    _StreamUnary = grpc.StreamUnaryClientInterceptor
    _StreamStream = grpc.StreamStreamClientInterceptor
    _Server = grpc.ServerInterceptor
    _AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _AioStreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _AioStreamStream = grpc.aio.StreamStreamClientInterceptor
    _AioServer = grpc.aio.ServerInterceptor

_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED.name
_UNKNOWN = grpc.StatusCode.UNKNOWN.name


def message_size(message: Any) -> int:
    """Serialized size of `message`: len() of bytes, ByteSize() of a protobuf message.

    Raises TypeError for anything else; the interceptors then count 0 bytes and log
    once that `size_of=` is needed.
    """
    if isinstance(message, bytes | bytearray | memoryview):
        return memoryview(message).nbytes
    byte_size = getattr(message, "ByteSize", None)
    if byte_size is None:
        raise TypeError(f"cannot size a {type(message).__name__} message: pass size_of=")
    return int(byte_size())


def _error_type(code: grpc.StatusCode | None) -> str | None:
    return None if code is None or code is _OK else code.name


class _Counting:
    """What every interceptor shares: count a sent message, count an ended call."""

    __slots__ = ("_logged", "_records_of", "_size_of", "metrics")

    def __init__(
        self, metrics: ConnectorMetrics, size_of: Measure, records_of: Measure | None
    ) -> None:
        self.metrics = metrics
        self._size_of = size_of
        self._records_of = records_of
        self._logged: set[str] = set()

    def log_once(self, what: str) -> None:
        """Log the exception being handled, once per interceptor and kind of failure."""
        if what not in self._logged:
            self._logged.add(what)
            _logger.warning(
                "otel_agents: %s failed; calls are unaffected but this count is "
                "incomplete (logged once)",
                what,
                exc_info=True,
            )

    def sent(self, message: Any, nbytes: int | None = None) -> None:
        if nbytes is None:
            try:
                nbytes = self._size_of(message)
            except Exception:
                nbytes = 0
                self.log_once("size_of(message)")
        rows = 0
        if self._records_of is not None:
            try:
                rows = self._records_of(message)
            except Exception:
                self.log_once("records_of(message)")
        self.metrics.record_batch(rows, nbytes)

    def ended(self, error_type: str | None) -> None:
        # The error first: a reader of the query count then also sees its error.
        if error_type is not None:
            self.metrics.record_error(error_type)
        self.metrics.record_query()

    def counted(self, messages: Iterator[Any]) -> Iterator[Any]:
        # Not `yield from`: closing this must not close the caller's iterator.
        for message in messages:
            self.sent(message)
            yield message

    async def acounted(self, messages: Any) -> AsyncIterator[Any]:
        async for message in messages:
            self.sent(message)
            yield message

    def requests(self, messages: Any) -> Any:
        if hasattr(messages, "__aiter__"):
            return self.acounted(messages)
        return self.counted(iter(messages))

    def serializer(self, serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
        def counted_serialize(message: Any) -> bytes:
            data = message if serialize is None else serialize(message)
            try:
                self.sent(message, len(data))
            except Exception:
                self.log_once("counting a serialized response")
            return data

        return counted_serialize
