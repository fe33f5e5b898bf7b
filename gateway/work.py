"""The event loop's time, shared fairly: each request's work in short slices, each
tenant's work within a budget.

Every request is handled on one event loop. Work that grows with the body
(decompressing, decoding, checking points) is written as steps that `yield`
now and then; `Work.run` drives them and hands the loop back to other requests
whenever a slice (`SLICE_SECONDS`) has been used, so no request holds the loop
much longer than that, however large or hostile it is. The time each request
spent is added up and charged to its tenant's `WorkBudget`: a tenant whose
requests cost more than its share of the loop is refused (`work_limited`, with a
retry delay) before its next body is read, so it cannot slow the others down
by sending expensive requests at its allowed rate.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Executor
from typing import TypeVar

from gateway.errors import WorkLimited

SLICE_SECONDS = 0.001
"""Longest stretch one request's work holds the event loop before letting others run.
Each of another request's several waits for the loop may come behind one slice:
with 5 ms slices an expensive tenant tripled another's p99, with 1 ms much less
(docs/gateway.md, "No request stalls the others"); a pause costs ~20 µs."""
MAX_ITERATION_SLICES = 4
"""Slices of several tenants' work started in one loop iteration, at most."""
MAX_DEFERRALS = 4
"""Loop iterations a waiting slice lets go by while other callbacks are ready, at most:
the others' short steps go first, and long work still gets at least one slice in five."""
MAX_RETRY_SECONDS = 5.0
"""A longer retry delay outruns exporters' export timeouts: they would drop the batch."""

T = TypeVar("T")
A = TypeVar("A")
Steps = Generator[None, None, T]
"""Work written as steps: it yields where it may be paused, and returns its result."""


class Work:
    """The loop time one request has used, and where it pauses to let others run.

    With an `account` (its tenant's, from WorkBudget) each slice is charged as it
    ends, and a tenant in debt waits a moment before each next slice: its work
    goes on at its share of the loop while others are served.
    """

    __slots__ = (
        "_in_slice",
        "_iteration",
        "_started",
        "account",
        "seconds",
        "slice_seconds",
        "tenant_id",
        "turns",
    )

    def __init__(self, slice_seconds: float = SLICE_SECONDS) -> None:
        self.slice_seconds = slice_seconds
        self.seconds = 0.0
        """Loop time spent on this request's steps so far."""
        self.tenant_id = ""
        """Whose work it is: turns go round the tenants."""
        self.account: Account | None = None
        self.turns: Turns | None = None
        self._started = time.perf_counter()
        self._in_slice = 0.0  # worked in the current slice, over several `run`s
        self._iteration = -1  # the loop iteration of the current slice

    def begin(self) -> None:
        """The request's own work starts (or resumes) now."""
        self._started = time.perf_counter()

    def end(self) -> None:
        """The request's work stops here: the time since `begin` is counted."""
        seconds = time.perf_counter() - self._started
        self._in_slice += seconds
        self.add(seconds)
        if self.turns is not None:
            self.turns.used(seconds)

    def add(self, seconds: float) -> None:
        """Count `seconds` of work done for this request (elsewhere: a worker thread)."""
        self.seconds += seconds
        if self.account is not None:
            self.account.charge(seconds)

    def due(self) -> bool:
        """True when the current slice is used up."""
        return self._in_slice + time.perf_counter() - self._started >= self.slice_seconds

    async def pause(self) -> None:
        """Count the slice, let other requests run, start a new slice."""
        self.end()
        delay = 0.0 if self.account is None else self.account.delay()
        if delay or self.turns is None:
            await asyncio.sleep(delay)
            self._in_slice = 0.0
        await self._turn()
        self.begin()

    async def _turn(self) -> None:
        # A slice begun in this loop iteration goes on (decoding, then checking,
        # then stamping a small request is one slice); otherwise wait for a turn.
        turns = self.turns
        if turns is None or (
            self._iteration == turns.iteration and self._in_slice < self.slice_seconds
        ):
            return
        await turns.take(self.tenant_id)
        self._iteration, self._in_slice = turns.iteration, 0.0

    async def offload(self, executor: Executor, function: Callable[[A], T], argument: A) -> T:
        """`function(argument)` on a worker thread of `executor`, its thread time counted.

        A tenant's offloaded work goes one request at a time, its budget checked
        again before each: many large requests admitted at once cannot fill the
        executor's queue ahead of other tenants, nor run past the tenant's share.
        """
        account = self.account
        if account is None:
            result, seconds = await _in_thread(executor, function, argument)
            self.add(seconds)
            return result
        async with account.offloads:
            account.check()
            result, seconds = await _in_thread(executor, function, argument)
            self.add(seconds)
            return result

    def run_small(self, steps: Steps[T]) -> T:
        """`steps` known to be short (a small request): run at once, time counted."""
        self.begin()
        try:
            return finish(steps)
        finally:
            self.end()

    async def run(self, steps: Steps[T]) -> T:
        """Drive `steps` to their result, pausing whenever a slice is used up."""
        await self._turn()
        self.begin()
        try:
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                if self.due():
                    await self.pause()
        finally:
            self.end()
            steps.close()


async def _in_thread(
    executor: Executor, function: Callable[[A], T], argument: A
) -> tuple[T, float]:
    def timed() -> tuple[T, float]:
        started = time.thread_time()
        result = function(argument)
        return result, time.thread_time() - started

    return await asyncio.get_running_loop().run_in_executor(executor, timed)


def finish(steps: Steps[T]) -> T:
    """Run `steps` to their result without pausing (tests, small inputs)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


class Account:
    """One tenant's loop seconds: refilled at `per_second` up to `burst`, charged
    as its requests work; in debt, it waits before each slice and new requests
    are refused."""

    __slots__ = ("_clock", "balance", "burst", "offloads", "per_second", "tenant_id", "updated")

    def __init__(
        self, tenant_id: str, clock: Callable[[], float], per_second: float, burst: float
    ) -> None:
        self.tenant_id = tenant_id
        self._clock = clock
        self.per_second, self.burst = per_second, burst
        self.balance = burst
        self.updated = clock()
        self.offloads = asyncio.Lock()
        """Held by the tenant's work on a worker thread: one at a time."""

    def check(self) -> None:
        """Raise WorkLimited while the tenant owes more than it has."""
        self.refill(self.per_second, self.burst)
        if self.balance > 0:
            return
        wait = min(MAX_RETRY_SECONDS, max(1.0, math.ceil(-self.balance / self.per_second)))
        raise WorkLimited(
            f"tenant {self.tenant_id!r} used its share of the gateway's processing time "
            f"({self.per_second:g} s per second, burst {self.burst:g} s; settings "
            "work_seconds_per_second, work_burst_seconds): its requests cost too much to "
            "decompress, decode or check; send smaller or fewer batches, retry in "
            f"{wait:g} s",
            retry_after_seconds=wait,
        )

    def refill(self, per_second: float, burst: float) -> None:
        """Bring the balance up to now, under the limits in force (they may change)."""
        now = self._clock()
        self.per_second, self.burst = per_second, burst
        self.balance = min(burst, self.balance + (now - self.updated) * per_second)
        self.updated = now

    def charge(self, seconds: float) -> None:
        """`seconds` of work were done; the debt is capped at one burst, so a tenant
        that stops is served again within a few seconds."""
        self.refill(self.per_second, self.burst)
        self.balance = max(-self.burst, self.balance - seconds)

    def delay(self) -> float:
        """How long the next slice waits: the time the debt takes to pay, a slice at most."""
        if self.balance >= 0:
            return 0.0
        return min(SLICE_SECONDS, -self.balance / self.per_second)


class Turns:
    """Who works next on the loop: a tenant works at most one slice per loop
    iteration, and an iteration at most `MAX_ITERATION_SLICES` slices.

    Slices alone are not enough: twenty requests each ready with a 1 ms slice make
    a 20 ms iteration. A request starts working at once when its tenant has not
    worked in this iteration (a short request is done within that slice);
    otherwise, and after each slice, it waits its turn, and turns go round the
    tenants, one slice each, so a tenant with many long requests gets no more of
    the loop than one with a single short one. A turn is given when no other
    callback is ready (or after `MAX_DEFERRALS` iterations): a slice every
    iteration would put one in front of each of another request's many steps
    through the loop (receive, check, forward, answer).
    """

    def __init__(self, slice_seconds: float = SLICE_SECONDS) -> None:
        self.slice_seconds = slice_seconds
        self._used = 0.0
        self._working: set[str] = set()
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._ticking = False
        self._deferred = 0
        self.iteration = 0
        """Counts the loop iterations in which there was work."""

    async def take(self, tenant_id: str) -> None:
        """Return when `tenant_id` may work one slice."""
        if (
            tenant_id not in self._working
            and tenant_id not in self._waiting
            and self._used < MAX_ITERATION_SLICES * self.slice_seconds
        ):
            self._working.add(tenant_id)
            self._tick_soon()
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant_id, deque()).append(turn)
        self._tick_soon()
        await turn

    def used(self, seconds: float) -> None:
        """A slice of `seconds` was worked in this iteration."""
        self._used += seconds

    def _tick_soon(self) -> None:
        if not self._ticking:
            self._ticking = True
            asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        # Runs once per loop iteration while there is work: a new iteration,
        # a slice for one waiting request (it runs in the next iteration).
        self._ticking = False
        if self._waiting and self._deferred < MAX_DEFERRALS and _others_ready():
            # Another request's callback (an answer from the Collector, a message
            # that arrived) would otherwise wait behind the slice, and a request
            # that crosses the loop ten times would wait ten slices.
            self._deferred += 1
            self._tick_soon()
            return
        self._deferred = 0
        self.iteration += 1
        self._used = 0.0
        self._working.clear()
        while self._waiting:
            tenant_id = next(iter(self._waiting))
            queue = self._waiting.pop(tenant_id)
            turn = queue.popleft()
            if queue:
                self._waiting[tenant_id] = queue  # to the back: round the tenants
            if not turn.done():  # a cancelled request gives up its turn
                turn.set_result(None)
                self._working.add(tenant_id)
                break
        if self._waiting or self._working:
            self._tick_soon()


def _others_ready() -> bool:
    """True when callbacks are waiting to run on the loop (asyncio's ready queue; a
    loop without one, uvloop, never defers)."""
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    return bool(ready)


class WorkBudget:
    """Each tenant's share of the event loop, one Account per tenant, and the turns."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._accounts: dict[str, Account] = {}
        self.turns = Turns()

    def account(self, tenant_id: str, per_second: float, burst: float) -> Account | None:
        """`tenant_id`'s account, brought up to now; WorkLimited while it is in debt;
        None when the budget is off (`per_second` 0)."""
        if per_second <= 0:
            return None
        account = self._accounts.get(tenant_id)
        if account is None:
            account = self._accounts[tenant_id] = Account(tenant_id, self._clock, per_second, burst)
        account.refill(per_second, burst)
        account.check()
        return account
