"""gRPC interceptors (grpcio, sync and asyncio) that count a connector's calls.

Where this sits: connector's gRPC calls ──(otel_agents: *interceptors*)──▶ ConnectorMetrics.

What is counted, on each side of each call (unary and streaming alike):

- `connector_queries_processed_total`: 1 when the call ends, whatever its status, so
  that errors / queries is a failure ratio.
- `connector_errors_total{error_type}`: 1 when the call ends with a non-OK status;
  `error_type` is the status code name (`UNAVAILABLE`, `CANCELLED`, ...). A server
  counts the status its handler produced (an exception without a code is `UNKNOWN`, a
  response stream abandoned by the client is `CANCELLED`); a client, the status it got.
- `connector_bytes_sent_total`, `connector_records_sent_total`: the messages *this
  side* sends (a client's requests, a server's responses), each when it is handed to
  gRPC, also on calls that fail later. A server wraps the handler's response
  serializer, so bytes are the exact serialized length. A client sees messages before
  serialization: bytes are `size_of(message)` (default `message_size`: `len()` of
  bytes, `ByteSize()` of protobuf messages, which costs about a second serialization).
  Records are `records_of(message)` when given (e.g. `otel_agents.arrow.ipc_row_count`
  for Arrow IPC payloads), else not counted.

Calls behave exactly as without the interceptors: exceptions propagate unchanged,
streams stay lazy (a message is counted when gRPC pulls it), and a failure while
counting is logged once and never reaches the call.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from otel_agents.connector import ConnectorMetrics, error_type_of

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


# -- clients ------------------------------------------------------------------------------


class ClientInterceptor(_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
    """Counts the calls of a sync channel: `grpc.intercept_channel(channel, interceptor)`."""

    def __init__(
        self,
        metrics: ConnectorMetrics,
        *,
        size_of: Measure = message_size,
        records_of: Measure | None = None,
    ) -> None:
        """Count into `metrics`; `size_of`/`records_of` measure each request sent."""
        self._counting = _Counting(metrics, size_of, records_of)

    def _invoke(self, continuation: Any, details: Any, request: Any) -> Any:
        try:
            call = continuation(details, request)
        except BaseException as exc:
            self._counting.ended(error_type_of(exc))
            raise
        try:
            # Blocking calls are already done and run the callback at once; futures
            # and response streams run it when the call ends, on a gRPC thread.
            call.add_done_callback(self._call_ended)
        except Exception:
            self._counting.log_once("watching a gRPC call")
        return call

    def _call_ended(self, call: Any) -> None:
        try:
            self._counting.ended(_error_type(call.code()))
        except Exception:
            self._counting.log_once("counting an ended gRPC call")

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        """Count the request, then the call when it ends."""
        self._counting.sent(request)
        return self._invoke(continuation, client_call_details, request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        """Count the request, then the call when its response stream ends."""
        self._counting.sent(request)
        return self._invoke(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """Count each request as gRPC sends it, then the call when it ends."""
        requests = self._counting.counted(request_iterator)
        return self._invoke(continuation, client_call_details, requests)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """Count each request as gRPC sends it, then the call when it ends."""
        requests = self._counting.counted(request_iterator)
        return self._invoke(continuation, client_call_details, requests)


class _AioClient:
    def __init__(self, counting: _Counting) -> None:
        self._counting = counting
        self._pending: set[asyncio.Task[None]] = set()

    async def _invoke(self, continuation: Any, details: Any, request: Any) -> Any:
        try:
            call = await continuation(details, request)
        except BaseException as exc:
            self._counting.ended(error_type_of(exc))
            raise
        try:
            if call.done():  # a later interceptor may have answered already
                self._call_ended(call)
            else:
                call.add_done_callback(self._call_ended)
        except Exception:
            self._counting.log_once("watching a grpc.aio call")
        return call

    def _call_ended(self, call: Any) -> None:
        # grpc.aio's code() is a coroutine; on a finished call it returns without
        # suspending, so it is read here rather than in a task per call.
        try:
            status = call.code()
            status.send(None)
        except StopIteration as finished:
            self._ended(finished.value)
            return
        except asyncio.CancelledError:
            self._ended(grpc.StatusCode.CANCELLED)
            return
        except Exception:
            self._counting.log_once("reading the status of a grpc.aio call")
            return
        status.close()  # it suspended: the status is not there yet after all
        try:
            task = asyncio.get_running_loop().create_task(self._ended_later(call))
        except Exception:
            self._counting.log_once("waiting for the status of a grpc.aio call")
            return
        self._pending.add(task)  # the loop keeps only a weak reference to tasks
        task.add_done_callback(self._pending.discard)

    async def _ended_later(self, call: Any) -> None:
        try:
            code = await call.code()
        except Exception:
            self._counting.log_once("reading the status of a grpc.aio call")
            return
        self._ended(code)

    def _ended(self, code: grpc.StatusCode) -> None:
        try:
            self._counting.ended(_error_type(code))
        except Exception:
            self._counting.log_once("counting an ended grpc.aio call")


class _AioUnaryUnaryInterceptor(_AioClient, _AioUnaryUnary):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        self._counting.sent(request)
        return await self._invoke(continuation, client_call_details, request)


class _AioUnaryStreamInterceptor(_AioClient, _AioUnaryStream):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        self._counting.sent(request)
        return await self._invoke(continuation, client_call_details, request)


class _AioStreamUnaryInterceptor(_AioClient, _AioStreamUnary):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        requests = self._counting.requests(request_iterator)
        return await self._invoke(continuation, client_call_details, requests)


class _AioStreamStreamInterceptor(_AioClient, _AioStreamStream):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        requests = self._counting.requests(request_iterator)
        return await self._invoke(continuation, client_call_details, requests)


def aio_client_interceptors(
    metrics: ConnectorMetrics,
    *,
    size_of: Measure = message_size,
    records_of: Measure | None = None,
) -> list[Any]:
    """Interceptors for `grpc.aio.insecure_channel(..., interceptors=...)`, one per call kind.

    (grpc.aio files an interceptor under its first matching kind only, hence four. The
    list is typed Any because grpc-stubs leaves `grpc.aio.ClientInterceptor` unusable.)
    """
    counting = _Counting(metrics, size_of, records_of)
    return [
        _AioUnaryUnaryInterceptor(counting),
        _AioUnaryStreamInterceptor(counting),
        _AioStreamUnaryInterceptor(counting),
        _AioStreamStreamInterceptor(counting),
    ]


# -- servers ------------------------------------------------------------------------------


class ServerInterceptor(_Server):
    """Counts the calls a sync `grpc.server(..., interceptors=[...])` serves."""

    def __init__(self, metrics: ConnectorMetrics, *, records_of: Measure | None = None) -> None:
        """Count into `metrics`; `records_of` counts the records of each response sent."""
        self._counting = _Counting(metrics, message_size, records_of)

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """The method's handler, with counting behaviour and response serializer."""
        return _instrumented(continuation(handler_call_details), self._counting)


class AioServerInterceptor(_AioServer):
    """Counts the calls a `grpc.aio.server(interceptors=[...])` serves (async or sync handlers)."""

    def __init__(self, metrics: ConnectorMetrics, *, records_of: Measure | None = None) -> None:
        """Count into `metrics`; `records_of` counts the records of each response sent."""
        self._counting = _Counting(metrics, message_size, records_of)

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """The method's handler, with counting behaviour and response serializer."""
        return _instrumented(await continuation(handler_call_details), self._counting)


_HANDLER_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _instrumented(handler: Any, counting: _Counting) -> Any:
    if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED, nothing was served
        return None
    try:
        kind = ("stream_" if handler.request_streaming else "unary_") + (
            "stream" if handler.response_streaming else "unary"
        )
        behaviour = getattr(handler, kind)
        if not getattr(behaviour, "experimental_non_blocking", False):
            behaviour = _counting_behaviour(behaviour, handler.response_streaming, counting)
        return _HANDLER_FACTORIES[kind](
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=counting.serializer(handler.response_serializer),
        )
    except Exception:
        counting.log_once("instrumenting a gRPC method handler")
        return handler


def _counting_behaviour(behaviour: Any, streaming: bool, counting: _Counting) -> Any:
    # grpc.aio picks how to run a handler from its kind (coroutine function, async
    # generator function, plain function run in a thread), so the wrapper has the
    # same kind as the handler it wraps.
    if inspect.isasyncgenfunction(behaviour):

        async def async_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            outcome: str | None = _CANCELLED  # unless the stream ends on its own
            try:
                async for response in behaviour(request, context):
                    yield response
                outcome = _ended_code(context)
            except GeneratorExit:
                raise
            except BaseException as exc:
                outcome = _failure_code(context, exc)
                raise
            finally:
                counting.ended(outcome)

        return async_stream
    if inspect.iscoroutinefunction(behaviour):

        async def coroutine(request: Any, context: Any) -> Any:
            try:
                result = await behaviour(request, context)
            except BaseException as exc:
                counting.ended(_failure_code(context, exc))
                raise
            counting.ended(_ended_code(context))
            return result

        return coroutine

    def function(request: Any, context: Any) -> Any:
        try:
            result = behaviour(request, context)
        except BaseException as exc:
            counting.ended(_failure_code(context, exc))
            raise
        if streaming:
            return _finishing(result, context, counting)
        counting.ended(_ended_code(context))
        return result

    return function


def _finishing(responses: Any, context: Any, counting: _Counting) -> Iterator[Any]:
    outcome: str | None = _CANCELLED  # gRPC drops the stream when the client goes away
    try:
        yield from responses
        outcome = _ended_code(context)
    except GeneratorExit:
        raise
    except BaseException as exc:
        outcome = _failure_code(context, exc)
        raise
    finally:
        counting.ended(outcome)


def _ended_code(context: Any) -> str | None:
    """The error type of a handler that returned: the code it set, if any."""
    try:
        return _error_type(context.code())
    except Exception:  # a context without code() (grpcio < 1.38): count the call as OK
        return None


def _failure_code(context: Any, exc: BaseException) -> str:
    """The error type of a handler that raised, as gRPC will report it."""
    if isinstance(exc, asyncio.CancelledError):
        return _CANCELLED
    # abort() sets the code before raising; other exceptions keep a code set earlier.
    return _ended_code(context) or _UNKNOWN


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
