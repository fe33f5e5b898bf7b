"""The call a sync client gets back: the real call, counted once when it ends.

gRPC cancels a call that is collected before it ends (`for r in stub.Stream(req):
return`, a dropped `.future()`), which frees the server's worker. A done-callback on
the call would break that: gRPC keeps its callbacks, and with them the call, alive
until the call ends, so an abandoned stream would run on until its deadline. This
wrapper registers nothing on the call; it counts when its caller sees the call end
(the end of the stream, `result()`, `code()`, `cancel()`, a done-callback of the
caller's own), or, when the caller drops it first, cancels the call exactly as gRPC's
own collection would and counts that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from otel_agents.grpc_instrumentation._counting import _CANCELLED, _Counting, _error_type

if TYPE_CHECKING:
    _Future = grpc.Future[Any]
else:  # not generic at run time
    _Future = grpc.Future


class CountedCall(grpc.RpcError, grpc.Call, _Future):
    """A sync gRPC call (future, response stream) that counts itself once when it ends."""

    def __init__(self, call: Any, counting: _Counting) -> None:
        """Wrap `call`, counting into `counting`."""
        super().__init__()
        self._call = call
        self._counting = counting
        self._pending = [True]  # list.pop() is atomic: counted exactly once

    def _settle(self) -> None:
        try:
            if self._call.done():
                self._count(_error_type(self._call.code()))
        except Exception:
            self._counting.log_once("counting an ended gRPC call")

    def _count(self, error_type: str | None) -> None:
        try:
            self._pending.pop()
        except IndexError:
            return
        self._counting.ended(error_type)

    def __del__(self) -> None:
        if not self._pending:
            return
        try:
            # What gRPC does to a call collected before it ended; False if it had ended.
            if self._call.cancel():
                self._count(_CANCELLED)
            else:
                self._count(_error_type(self._call.code()))
        except Exception:
            self._counting.log_once("counting an abandoned gRPC call")

    # -- the response stream --

    def __iter__(self) -> CountedCall:
        """The response stream (response-streaming calls)."""
        return self

    def __next__(self) -> Any:
        """The next response, as gRPC gives it."""
        try:
            return next(self._call)
        except BaseException:
            self._settle()
            raise

    # -- grpc.Future --

    def cancel(self) -> bool:
        """Cancel the call."""
        cancelled = bool(self._call.cancel())
        self._settle()
        return cancelled

    def cancelled(self) -> bool:
        """True if the call was cancelled."""
        return bool(self._call.cancelled())

    def running(self) -> bool:
        """True while the call runs."""
        return bool(self._call.running())

    def done(self) -> bool:
        """True once the call ended."""
        done = bool(self._call.done())
        if done:
            self._settle()
        return done

    def result(self, timeout: float | None = None) -> Any:
        """The response of a unary-response call; raises as gRPC does."""
        try:
            return self._call.result(timeout)
        finally:
            self._settle()

    def exception(self, timeout: float | None = None) -> Any:
        """The call's exception, if any."""
        try:
            return self._call.exception(timeout)
        finally:
            self._settle()

    def traceback(self, timeout: float | None = None) -> Any:
        """The traceback of the call's exception, if any."""
        try:
            return self._call.traceback(timeout)
        finally:
            self._settle()

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        """Call `fn(call)` when the call ends (this keeps the call alive until then)."""

        def ended(_: Any) -> None:
            self._settle()
            fn(self)

        self._call.add_done_callback(ended)

    # -- grpc.Call --

    def is_active(self) -> bool:
        """True while the call runs."""
        return bool(self._call.is_active())

    def time_remaining(self) -> float:
        """Seconds left before the deadline (None without one, as gRPC returns)."""
        remaining: float = self._call.time_remaining()
        return remaining

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Call `callback()` when the call ends."""
        return bool(self._call.add_callback(callback))

    def initial_metadata(self) -> Any:
        """The server's initial metadata."""
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        """The server's trailing metadata (waits for the end)."""
        try:
            return self._call.trailing_metadata()
        finally:
            self._settle()

    def code(self) -> Any:
        """The status code (waits for the end)."""
        try:
            return self._call.code()
        finally:
            self._settle()

    def details(self) -> Any:
        """The status details (waits for the end)."""
        try:
            return self._call.details()
        finally:
            self._settle()

    def __getattr__(self, name: str) -> Any:
        # debug_error_string() and whatever else the real call offers.
        if name.startswith("__") or name in ("_call", "_counting", "_pending"):
            raise AttributeError(name)
        return getattr(self._call, name)

    def __str__(self) -> str:
        return str(self._call)

    def __repr__(self) -> str:
        return repr(self._call)
