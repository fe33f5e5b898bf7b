"""Server interceptors, sync and asyncio: count the calls a connector serves."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio

from otel_agents.connector import ConnectorMetrics
from otel_agents.grpc_instrumentation._counting import (
    _CANCELLED,
    _UNKNOWN,
    Measure,
    _AioServer,
    _Counting,
    _error_type,
    _Server,
    message_size,
)

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
