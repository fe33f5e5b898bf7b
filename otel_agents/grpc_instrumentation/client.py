"""Client interceptors, sync and asyncio: count the calls a connector makes."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio

from otel_agents.connector import ConnectorMetrics, error_type_of
from otel_agents.grpc_instrumentation._call import CountedCall
from otel_agents.grpc_instrumentation._counting import (
    Measure,
    _AioStreamStream,
    _AioStreamUnary,
    _AioUnaryStream,
    _AioUnaryUnary,
    _Counting,
    _error_type,
    _StreamStream,
    _StreamUnary,
    _UnaryStream,
    _UnaryUnary,
    message_size,
)

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
            if call.done():  # a blocking call, or one that failed at once
                self._counting.ended(_error_type(call.code()))
                return call
            # Futures and response streams: no done-callback, which would keep an
            # abandoned call alive (see CountedCall).
            return CountedCall(call, self._counting)
        except Exception:
            self._counting.log_once("watching a gRPC call")
        return call

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
