"""Restarts the native stack's processes when they die, as compose's `restart: unless-stopped`.

A `Supervisor` watches processes a `LocalStack` started. One that exits while it is
watched (crash, OOM kill, `kill -9`, even a clean exit: compose restarts those too)
is started again in place (same argv, environment, ports, log appended) after a
back-off: 1 s, doubling up to 30 s while it keeps dying quickly, back to 1 s once it
has stayed up for a minute. Each exit and restart is reported with its exit code.

A deliberate stop is never fought: stop a watched process with `Supervisor.stop`,
and call `close()` before `LocalStack.stop_all()`. Once `close()` has returned no
restart is under way and none will happen.
"""

from __future__ import annotations

import datetime
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from stack.local import LocalStack, Process, http_get

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """How long to wait before restarting a process that keeps dying."""

    initial: float = 1.0
    maximum: float = 30.0
    reset_after: float = 60.0
    """Up for this long, a process's next exit counts as its first again."""

    def delay(self, quick_exits: int) -> float:
        """The wait before the restart that follows `quick_exits` exits in a row (≥ 1)."""
        return float(min(self.initial * 2 ** (quick_exits - 1), self.maximum))


@dataclass(frozen=True)
class Restart:
    """One restart: which process, how its previous run ended, how long it waited."""

    name: str
    exit_code: int
    uptime: float
    delay: float


@dataclass
class _Watch:
    process: Process
    started: float
    quick_exits: int = 0
    restart_at: float | None = None
    last_exit: Restart | None = None  # the exit a pending restart answers
    awaiting_ready: float | None = None  # when it was restarted, until its ready URL answers


def describe_exit(code: int) -> str:
    """`3`, or `-9 (SIGKILL)` for a process ended by a signal."""
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


class Supervisor:
    """Watches processes of one `LocalStack` and restarts those that exit."""

    def __init__(
        self,
        stack: LocalStack,
        *,
        backoff: Backoff | None = None,
        report: Callable[[str], None] = logger.warning,
        interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stack = stack
        self._backoff = backoff or Backoff()
        self._report = report
        self._interval = interval
        self._clock = clock
        self._watches: dict[int, _Watch] = {}  # by id(process)
        self._lock = threading.Lock()
        self._closed = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts: list[Restart] = []
        """Every restart so far, oldest first."""

    # -- what is watched -------------------------------------------------------------

    def watch(self, *processes: Process) -> None:
        """Restart each of `processes` whenever it exits, from now on."""
        with self._lock:
            for process in processes:
                self._watches[id(process)] = _Watch(process, started=self._clock())

    def stop(self, process: Process, timeout: float = 10.0) -> None:
        """Stop `process` on purpose: it is no longer watched, then `LocalStack.stop`."""
        with self._lock:
            self._watches.pop(id(process), None)
        self._stack.stop(process, timeout)

    def watched(self) -> list[Process]:
        """The processes watched now."""
        with self._lock:
            return [w.process for w in self._watches.values()]

    # -- running -------------------------------------------------------------------

    def start(self) -> Supervisor:
        """Poll in a background thread every `interval` seconds until `close()`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop supervising; on return no restart is under way and none will happen."""
        with self._lock:  # waits for a poll that is restarting something
            self._closed = True
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.poll()
            except Exception:
                # The supervisor must outlive whatever it supervises.
                logger.exception("supervisor poll failed")

    def poll(self) -> None:
        """One round: notice exits, restart those whose back-off is over, report readiness."""
        with self._lock:
            if self._closed:
                return
            for key, watch in list(self._watches.items()):
                if watch.process not in self._stack.processes:
                    # Stopped with LocalStack.stop directly: on purpose, leave it.
                    del self._watches[key]
                    if watch.restart_at is not None:
                        self._report(f"{watch.process.name} was stopped: not restarting it")
                    continue
                self._check(watch)

    def _check(self, watch: _Watch) -> None:
        process, now = watch.process, self._clock()
        if watch.restart_at is None:
            code = process.popen.poll()
            if code is None:
                if watch.awaiting_ready is not None:
                    self._check_ready(watch, now)
                return
            uptime = now - watch.started
            long_lived = uptime >= self._backoff.reset_after
            watch.quick_exits = 1 if long_lived else watch.quick_exits + 1
            delay = self._backoff.delay(watch.quick_exits)
            watch.restart_at = now + delay
            watch.awaiting_ready = None
            watch.last_exit = Restart(process.name, code, uptime, delay)
            self._report(
                f"{process.name} (pid {process.popen.pid}) exited with {describe_exit(code)} "
                f"after {uptime:.1f} s (log: {process.log}); restarting it in {delay:g} s"
            )
        elif now >= watch.restart_at:
            code = process.popen.returncode
            _append_to_log(
                process, f"exited with {describe_exit(code)}; restarted by the supervisor"
            )
            try:
                self._stack.restart(process)
            except OSError as exc:
                watch.quick_exits += 1
                delay = self._backoff.delay(watch.quick_exits)
                watch.restart_at = now + delay
                self._report(
                    f"{process.name} could not be restarted ({exc}); next try in {delay:g} s"
                )
                return
            watch.started, watch.restart_at = self._clock(), None
            watch.awaiting_ready = watch.started if process.ready_url else None
            if watch.last_exit is not None:
                self.restarts.append(watch.last_exit)
            count = sum(r.name == process.name for r in self.restarts)
            self._report(f"{process.name} restarted (pid {process.popen.pid}, restart {count})")

    def _check_ready(self, watch: _Watch, now: float) -> None:
        assert watch.awaiting_ready is not None
        status, _ = http_get(watch.process.ready_url, timeout=0.5)
        if status == 200:
            seconds = now - watch.awaiting_ready
            self._report(f"{watch.process.name} ready again {seconds:.1f} s after its restart")
            watch.awaiting_ready = None


def _append_to_log(process: Process, message: str) -> None:
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    try:
        with process.log.open("a") as log:
            log.write(f"\n[supervisor {stamp}] {message}\n")
    except OSError:
        logger.warning("could not write to %s", process.log)
