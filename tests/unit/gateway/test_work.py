"""Slices, turns and work budgets (gateway.work), and protobuf decoded in slices
(gateway.decode): parsing the parts one after another gives what parsing the whole gives."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from gateway_fixtures import counter_request, run
from hypothesis import HealthCheck, example, given, settings
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from test_hostile_strategies import bodies

from gateway import decode
from gateway.errors import GatewayError, InvalidRequest, TooManyDataPoints, WorkLimited
from gateway.validate import bounded_count
from gateway.work import Steps, Turns, Work, WorkBudget, finish


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_tenant_in_debt_is_refused_until_its_share_refills() -> None:
    clock = Clock()
    budget = WorkBudget(clock)
    account = budget.account("acme", per_second=0.5, burst=1.0)
    assert account is not None
    account.charge(2.5)  # one expensive request: the debt is capped at one burst
    assert account.balance == -1.0
    assert account.delay() > 0
    with pytest.raises(WorkLimited) as refused:
        budget.account("acme", 0.5, 1.0)
    assert refused.value.retry_after_seconds == 2.0
    assert "work_seconds_per_second" in str(refused.value)
    assert budget.account("globex", 0.5, 1.0) is not None  # another tenant's share
    clock.now = 2.1
    assert budget.account("acme", 0.5, 1.0) is not None
    assert budget.account("acme", 0.0, 1.0) is None  # off


def test_work_runs_steps_in_slices_and_counts_their_time() -> None:
    def steps() -> Steps[int]:
        for _ in range(100):
            sum(range(20_000))  # ~0.3-0.5 ms
            yield
        return 7

    async def scenario() -> tuple[int, int, float]:
        ticks = 0

        async def other() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(other())
        work = Work(slice_seconds=0.002)
        result = await work.run(steps())
        task.cancel()
        return result, ticks, work.seconds

    result, ticks, seconds = run(scenario())  # type: ignore[misc]
    assert result == 7
    # At least one pause per two slices' worth of work (~15 pauses expected).
    assert ticks > seconds / 0.002 / 2 > 5, (ticks, seconds)
    assert finish(steps()) == 7


def test_turns_go_round_the_tenants() -> None:
    async def scenario() -> list[str]:
        turns = Turns(slice_seconds=0.001)
        order: list[str] = []

        async def slices(tenant: str, count: int) -> None:
            for _ in range(count):
                await turns.take(tenant)
                order.append(tenant)
                turns.used(0.001)

        await asyncio.gather(slices("acme", 6), slices("globex", 2))
        return order

    order = run(scenario())
    assert isinstance(order, list)
    # acme's many slices do not hold globex back: globex's two are among the first four.
    assert order[:4].count("globex") == 2, order
    assert order.count("acme") == 6


def test_another_requests_steps_do_not_each_wait_behind_a_slice() -> None:
    """A request that crosses the loop many times (receive, check, forward, answer)
    goes between long work's slices, not one slice per crossing."""

    async def scenario() -> tuple[int, int]:
        turns = Turns(slice_seconds=0.001)
        done = False
        slices: set[int] = set()

        def long_work() -> Steps[None]:
            while not done:
                slices.add(turns.iteration)
                started = time.perf_counter()
                while time.perf_counter() - started < 0.0002:
                    pass
                yield

        work = Work(slice_seconds=0.001)
        work.tenant_id, work.turns = "acme", turns
        task = asyncio.create_task(work.run(long_work()))
        await asyncio.sleep(0.01)  # acme is working, slice after slice
        before = len(slices)
        for _ in range(20):
            await asyncio.sleep(0)  # globex's short steps, one loop crossing each
        during = len(slices) - before
        done = True
        await task
        return before, during

    before, during = run(scenario())  # type: ignore[misc]
    assert before >= 3, before  # the long work had the loop to itself
    # One slice per crossing would be 20; at most one in MAX_DEFERRALS + 1 crossings.
    assert during <= 20 // 5 + 1, during


def _sliced(body: bytes, max_points: int = 10_000) -> ExportMetricsServiceRequest:
    return finish(decode.decode_request(body, max_points))


@pytest.mark.slow
@settings(
    max_examples=150,
    database=None,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(bodies())
@example(body=b"\x00\x14\n\x00\x12\x07\n\x05\n\x03etl")  # field number 0: refused
def test_decoding_in_slices_gives_what_one_parse_gives(body: bytes) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode, "SLICE_BYTES", 16)  # every message of any size is walked
        try:
            whole = ExportMetricsServiceRequest.FromString(body)
        except Exception:
            with pytest.raises(InvalidRequest):
                _sliced(body)
            return
        try:
            sliced = _sliced(body)
        except TooManyDataPoints:
            pytest.fail("a small request walked past its structure bound")
        except GatewayError:
            # The walk is stricter than upb on one thing only: groups (wire types
            # 3 and 4) in unknown fields, which OTLP never has.
            assert any(b in body for b in (b"\x03", b"\x04", b"\x0b", b"\x0c"))
            return
        whole.DiscardUnknownFields()  # left out of the sliced parse
        assert sliced == whole


def test_a_large_request_decodes_the_same_in_slices() -> None:
    request = ExportMetricsServiceRequest()
    for n in range(3):
        point = counter_request(value=n, point_attributes={"blob": "x" * 100_000})
        request.resource_metrics.extend(point.resource_metrics)
    body = request.SerializeToString()
    assert len(body) > 2 * decode.SLICE_BYTES
    assert _sliced(body) == request


def test_the_walk_is_bounded_by_the_points_allowed() -> None:
    many_metrics = b"\x0a" + b"\x80\x80\x02" + b"\x12\x00" * (16 * 1024)  # 32 KiB
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode, "SLICE_BYTES", 1024)
        with pytest.raises(TooManyDataPoints, match="max_data_points_per_request=100"):
            _sliced(many_metrics, max_points=100)
        patch.setattr(decode, "SLICE_BYTES", 16)
        with pytest.raises(InvalidRequest, match="truncated"):
            _sliced(b"\x0a\x80\x80\x02" + b"\x12\x00" * 100)


def test_a_tenants_offloaded_work_goes_one_at_a_time_within_its_budget() -> None:
    running: list[int] = []
    most = 0

    def job(n: int) -> int:
        nonlocal most
        running.append(n)
        most = max(most, len(running))
        busy_until = time.thread_time() + 0.02  # CPU time: what the budget counts
        while time.thread_time() < busy_until:
            pass
        running.remove(n)
        return n

    async def scenario() -> tuple[list[int], type[BaseException] | None]:
        budget = WorkBudget()
        with ThreadPoolExecutor(max_workers=4) as executor:

            async def one(n: int) -> int:
                work = Work()
                work.account = budget.account("acme", per_second=0.001, burst=0.05)
                return await work.offload(executor, job, n)

            done = await asyncio.gather(*(one(n) for n in range(4)), return_exceptions=True)
        results = [d for d in done if isinstance(d, int)]
        errors = {type(d) for d in done if isinstance(d, BaseException)}
        return results, errors.pop() if errors else None

    results, error = run(scenario())  # type: ignore[misc]
    assert most == 1, "a tenant's offloaded work ran side by side"
    # 20 ms each against a 50 ms burst: the third finds the tenant in debt.
    assert results == [0, 1, 2]
    assert error is WorkLimited


def test_the_point_count_is_bounded_by_the_points_allowed() -> None:
    four = ExportMetricsServiceRequest()
    for n in range(4):
        four.resource_metrics.extend(counter_request(value=n).resource_metrics)
    assert bounded_count(four, 3) == 4  # the caller refuses "4 data points"
    empty = ExportMetricsServiceRequest()
    empty.resource_metrics.add().scope_metrics.add().metrics.extend([Metric(name="x")] * 20)
    with pytest.raises(TooManyDataPoints, match="over 12 resources, scopes and metrics"):
        bounded_count(empty, 3)
