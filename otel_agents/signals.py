"""SIGTERM: the final export first, then the default action; nothing that can hang.

Where this sits: agent code ──(otel_agents: *signals*)──▶ OTLP/gRPC ──▶ gateway.

Python runs a signal handler in the main thread between two bytecodes of whatever that
thread was doing: inside a `with lock:` of the library (`record_error`), of the SDK (a
`Counter.add`) or of the exit hook's own shutdown. A handler that waited there for the
final export could wait for a lock held by the very frame it interrupted (a process that
never ended, or a lost export). So the handler waits for nothing:

1. the first SIGTERM starts the final export on a thread of its own and returns, so the
   interrupted code goes on and releases what it holds;
2. when that export ends (bounded by the shutdown timeout) the thread sends SIGTERM
   again, and the handler does what SIGTERM did before `setup_metrics`: the default
   action (the process dies of SIGTERM, exit status 143);
3. SIGTERMs that arrive during the export change nothing (the export's deadline ends it).

The handler is installed only over SIGTERM's default action. A host's own handler (set
before `setup_metrics`, or after it, chaining to this one or not) decides how the host
stops, and the final export comes from the exit hook when the host exits: then it
carries what the host counted while winding down, and a host that goes on running after
a SIGTERM (a reload) keeps its metrics. Called by such a handler, this one does nothing.
SIGINT is left alone: hosts catch KeyboardInterrupt to cancel work and go on, and when
it ends the process the exit hook exports.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

_logger = logging.getLogger(__name__)

GRACE_S = 2.0
"""After the final export the main thread ends the process; if it runs no Python code for
this long (stuck in a C call), the export's thread ends it with exit status 143."""

_IDLE, _EXPORTING, _DONE = "idle", "exporting", "done"
_HOST_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Threads started inside never receive SIGINT or SIGTERM (nor the threads they start).

    The kernel gives a process's signal to any thread that does not block it; one taken
    by a library thread (gRPC's, the SDK's) trips Python's flag but does not wake the main
    thread, so a host sleeping in `time.sleep(60)` would not notice a Ctrl-C or a SIGTERM
    for a minute. Threads inherit the signal mask of the thread that starts them.
    """
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # reads it, changes nothing
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask (Windows)
        yield
        return
    # Blocking inside the try: a pending Ctrl-C raises KeyboardInterrupt as soon as the
    # call returns, and a main thread left blocking both signals would never get another.
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, _HOST_SIGNALS)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class SigtermHandler:
    """The process's SIGTERM handler: the final export of every `add`ed stop, then die."""

    def __init__(self) -> None:
        """Not installed until the first `add`."""
        self._stops: list[Callable[[], object]] = []
        self._state = _IDLE
        self._callback = self._handle  # one bound method, to recognise it with `is`
        self.installed = False

    def add(self, stop: Callable[[], object]) -> bool:
        """Run `stop` (bounded; it must return by its own deadline) on SIGTERM; True if
        SIGTERM is handled here."""
        self._stops.append(stop)
        if not self.installed:
            self.installed = self._install()
        return self.installed

    def _install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            _logger.info(
                "otel_agents: setup_metrics ran outside the main thread; on SIGTERM the "
                "final export is not sent (call telemetry.shutdown() in your own handler)"
            )
            return False
        try:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return False  # the host's own way of stopping (see the module's docstring)
            signal.signal(signal.SIGTERM, self._callback)
        except (ValueError, OSError, AttributeError):  # no SIGTERM here (Windows)
            return False
        if hasattr(os, "register_at_fork"):  # not on Windows
            os.register_at_fork(after_in_child=self._reset_after_fork)
        return True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self._on_top(signum):
            return  # a handler installed later called us: the host stops its own way
        if self._state == _IDLE:
            self._state = _EXPORTING
            try:
                with signals_blocked():
                    threading.Thread(
                        target=self._export_then_resignal,
                        args=(signum,),
                        name="otel-agents-sigterm",
                        daemon=True,
                    ).start()
            except RuntimeError:
                pass  # no new threads at interpreter exit: the exit hook is exporting
        elif self._state == _DONE:
            self._die(signum)

    def _export_then_resignal(self, signum: int) -> None:
        started = time.monotonic()
        self._stop_all()
        self._state = _DONE
        if not self._on_top(signum):
            return  # replaced during the export: the new handler decides
        os.kill(os.getpid(), signum)  # the main thread's handler now dies of it
        time.sleep(GRACE_S)
        _logger.warning(
            "otel_agents: the main thread did not end the process %.1f s after SIGTERM "
            "(busy in a C call?); exiting with status %d",
            time.monotonic() - started,
            128 + signum,
        )
        os._exit(128 + signum)

    def _stop_all(self) -> None:
        """Every stop at once: each is bounded, so all end by the longest deadline."""
        workers = [
            threading.Thread(target=_quietly, args=(stop,), daemon=True) for stop in self._stops
        ]
        with signals_blocked():
            for worker in workers:
                worker.start()
        for worker in workers:
            worker.join()

    @staticmethod
    def _die(signum: int) -> None:
        """SIGTERM's default action: the process dies of it (its parent sees that)."""
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def _on_top(self, signum: int) -> bool:
        return signal.getsignal(signum) is self._callback

    def _reset_after_fork(self) -> None:
        # A child forked during a final export has no export thread to finish it.
        self._state = _IDLE


def _quietly(stop: Callable[[], object]) -> None:
    try:
        stop()
    except Exception:  # a stop never raises by contract; the process must end anyway
        _logger.debug("otel_agents: final export on SIGTERM raised", exc_info=True)


_handler = SigtermHandler()


def on_sigterm(stop: Callable[[], object]) -> bool:
    """Run `stop` on SIGTERM, then die of it (see the module's docstring); call from the
    main thread. True if SIGTERM is handled here."""
    return _handler.add(stop)
