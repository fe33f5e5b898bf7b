"""Signals never hang or cut short the host: real processes, a live or a blackholed gateway.

A blackholed gateway is a listening socket that never answers: gRPC connects and then
waits for the deadline, the worst case for a final export. Each case checks how long the
process took to end after the first signal, and how many final exports arrived.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from otlp_receiver import OtlpReceiver, otlp_receiver

from otel_agents.lifecycle import STATE_KEY

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
SHUTDOWN_TIMEOUT_S = 2.0
# A process must end within the shutdown timeout plus this (start-up of the final export's
# thread, interpreter exit; generous for a loaded 2-core machine).
SLACK_S = 3.0

# Counts 5 records, says it is ready, then behaves as argv[1] asks.
AGENT = textwrap.dedent(
    """
    import atexit, os, signal, sys, threading, time
    from otel_agents import connector_metrics, setup_metrics

    mode, marker = sys.argv[1], sys.argv[2]

    def cleanup():
        time.sleep(0.3)  # a host's cleanup takes a while
        metrics.record_batch(1, 100)  # and counts its last batch
        with open(marker, "w") as done:
            done.write("cleaned")

    if mode == "own-shutdown":  # the host's handler sends the final export itself
        def own(signum, frame):
            telemetry.shutdown()
            sys.exit(0)
        signal.signal(signal.SIGTERM, own)
    if mode == "own-before":  # the host's handler exists before setup_metrics
        def own(signum, frame):
            cleanup()
            sys.exit(0)
        signal.signal(signal.SIGTERM, own)
    telemetry = setup_metrics("signals-agent", "connector")
    if mode == "many":  # a host that sets up metrics again and again (per flow run)
        for _ in range(9):
            again = setup_metrics("signals-agent", "connector", set_global=False)
            connector_metrics(again).record_query()
    metrics = connector_metrics(telemetry)
    metrics.record_batch(5, 500)
    stop = threading.Event()

    previous = signal.getsignal(signal.SIGTERM)
    if mode == "chain-first":  # the previous handler first, then the host's cleanup
        def host(signum, frame):
            previous(signum, frame)
            cleanup()
            sys.exit(0)
        signal.signal(signal.SIGTERM, host)
    if mode == "chain-last":  # the host's handler asks its main loop to stop, then chains
        def host(signum, frame):
            stop.set()
            previous(signum, frame)
        signal.signal(signal.SIGTERM, host)
    if mode == "exit":
        atexit.register(lambda: print("exiting", flush=True))
    if mode in ("errors", "own-shutdown"):
        metrics.record_error("UNAVAILABLE")
    if mode == "sdk-counter":  # the SDK's own locks, held inside Counter.add
        counter = telemetry.meter.create_counter("host.loops")
        counter.add(1)
    if mode == "flushed":  # gRPC's threads exist once an export has run
        telemetry.force_flush(5)
    print("ready", flush=True)
    if mode in ("errors", "own-shutdown"):
        while True:
            metrics.record_error("UNAVAILABLE")
    if mode == "sdk-counter":
        while True:
            counter.add(1, {"kind": "loop"})
    if mode in ("exit", "many"):
        sys.exit(0)
    if mode == "chain-last":
        stop.wait(60)
        cleanup()
        sys.exit(0)
    time.sleep(60)
    """
)


@contextmanager
def blackholed_gateway() -> Iterator[str]:
    """An endpoint whose port accepts connections (the kernel's backlog) and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def start(endpoint: str, mode: str, marker: Path) -> subprocess.Popen[str]:
    """The agent process, once it is ready (set up, counted, handlers installed)."""
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "PYTHONPATH": str(REPO),
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_AGENTS_API_KEY": "test-key",
        # No periodic export during the test: only the final one can carry the totals.
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        "OTEL_AGENTS_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT_S),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", AGENT, mode, str(marker)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line == "ready", process.stderr.read()  # type: ignore[union-attr]
    return process


def ended_within(process: subprocess.Popen[str], started: float) -> tuple[int, float]:
    """(exit status, seconds since `started`); the process is killed if it hangs."""
    try:
        status = process.wait(timeout=SHUTDOWN_TIMEOUT_S + SLACK_S + 10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the process was still alive {time.monotonic() - started:.1f} s after")
    finally:
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    return status, time.monotonic() - started


def final_exports(receiver: OtlpReceiver) -> list[tuple[str | None, int, int]]:
    """(state, records sent, errors) of each export the receiver got."""
    found = []
    for request in receiver.requests:
        for resource in request.resource_metrics:
            attributes = {kv.key: kv.value.string_value for kv in resource.resource.attributes}
            totals = {"connector.records_sent": 0, "connector.errors": 0}
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name in totals:
                        totals[metric.name] += sum(p.as_int for p in metric.sum.data_points)
            found.append(
                (
                    attributes.get(STATE_KEY),
                    totals["connector.records_sent"],
                    totals["connector.errors"],
                )
            )
    return found


@pytest.mark.parametrize(
    ("mode", "signals"),
    [
        ("sleep", [signal.SIGTERM, signal.SIGTERM]),
        ("sleep", [signal.SIGTERM, signal.SIGINT]),
        ("sleep", [signal.SIGINT, signal.SIGTERM]),
        ("sleep", [signal.SIGTERM] * 5),
        ("errors", [signal.SIGTERM, signal.SIGTERM]),
    ],
)
def test_any_signals_end_the_process_in_time_with_a_blackholed_gateway(
    tmp_path: Path, mode: str, signals: list[signal.Signals]
) -> None:
    with blackholed_gateway() as endpoint:
        process = start(endpoint, mode, tmp_path / "marker")
        started = time.monotonic()
        for signum in signals:
            process.send_signal(signum)
            time.sleep(0.5)  # the next one lands during the final export
        _, took = ended_within(process, started)
    assert took < SHUTDOWN_TIMEOUT_S + SLACK_S


def test_a_sigterm_during_a_normal_exit_ends_it_in_time(tmp_path: Path) -> None:
    with blackholed_gateway() as endpoint:
        process = start(endpoint, "exit", tmp_path / "marker")
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "exiting"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, took = ended_within(process, started)
    assert took < SHUTDOWN_TIMEOUT_S + SLACK_S


def test_the_exit_after_many_setups_waits_one_shutdown_timeout(tmp_path: Path) -> None:
    """Ten agents' final exports run side by side (before: one after another, 18 s)."""
    with blackholed_gateway() as endpoint:
        process = start(endpoint, "many", tmp_path / "marker")
        status, took = ended_within(process, time.monotonic())
    assert status == 0
    assert took < SHUTDOWN_TIMEOUT_S + SLACK_S


@pytest.mark.parametrize(
    ("mode", "signals", "statuses"),
    [
        ("sleep", [signal.SIGTERM], {-signal.SIGTERM}),
        ("sleep", [signal.SIGINT, signal.SIGTERM], {-signal.SIGINT, -signal.SIGTERM}),
        ("exit", [signal.SIGTERM], {0, -signal.SIGTERM}),
    ],
)
def test_the_final_export_arrives_once_whatever_the_signals(
    tmp_path: Path, mode: str, signals: list[signal.Signals], statuses: set[int]
) -> None:
    with otlp_receiver() as (receiver, endpoint):
        process = start(endpoint, mode, tmp_path / "marker")
        if mode == "exit":
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "exiting"
        started = time.monotonic()
        for signum in signals:
            process.send_signal(signum)
        status, took = ended_within(process, started)
        exports = final_exports(receiver)
    assert status in statuses
    assert exports == [("stopped", 5, 0)]
    assert took < SHUTDOWN_TIMEOUT_S + SLACK_S


@pytest.mark.parametrize(
    ("mode", "exit_status"),
    [("errors", -signal.SIGTERM), ("sdk-counter", -signal.SIGTERM), ("own-shutdown", 0)],
)
def test_a_sigterm_while_the_host_holds_a_counting_lock_still_sends_the_final_export(
    tmp_path: Path, mode: str, exit_status: int
) -> None:
    """The signal lands while the main thread holds a lock of the counting path
    (ConnectorMetrics' in `record_error`, the SDK's in `Counter.add`) for most of each
    loop; own-shutdown: the host's handler waits there for `telemetry.shutdown()`."""
    trials = 8
    for trial in range(trials):
        with otlp_receiver() as (receiver, endpoint):
            process = start(endpoint, mode, tmp_path / "marker")
            time.sleep(0.05 * trial)  # land at different points of the loop
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            status, took = ended_within(process, started)
            exports = final_exports(receiver)
        assert status == exit_status, f"trial {trial}"
        assert took < SHUTDOWN_TIMEOUT_S + SLACK_S, f"trial {trial}"
        [(state, records, errors)] = exports  # one final export, every trial
        assert (state, records) == ("stopped", 5)
        assert errors > 0 if mode != "sdk-counter" else errors == 0


@pytest.mark.parametrize("mode", ["chain-first", "chain-last", "own-before"])
def test_a_host_handler_runs_its_cleanup_and_its_exit_sends_the_final_export(
    tmp_path: Path, mode: str
) -> None:
    """chain-*: installed after setup_metrics, it calls the library's handler itself;
    own-before: installed before, it is left in place. Either way the host stops its own
    way and the exit hook sends the final export, once, with what it counted while
    winding down."""
    marker = tmp_path / "marker"
    with otlp_receiver() as (receiver, endpoint):
        process = start(endpoint, mode, marker)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status, took = ended_within(process, started)
        exports = final_exports(receiver)
    assert marker.read_text() == "cleaned"
    assert status == 0
    assert exports == [("stopped", 6, 0)]
    assert took < SHUTDOWN_TIMEOUT_S + SLACK_S


def test_a_host_handler_still_runs_when_the_gateway_is_blackholed(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    with blackholed_gateway() as endpoint:
        process = start(endpoint, "own-before", marker)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status, took = ended_within(process, started)
    assert marker.read_text() == "cleaned"
    assert status == 0
    assert took < SHUTDOWN_TIMEOUT_S + SLACK_S


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_the_library_threads_leave_the_host_signals_to_the_main_thread(tmp_path: Path) -> None:
    """A signal taken by another thread does not wake a main thread in time.sleep()."""
    host_signals = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    with otlp_receiver() as (receiver, endpoint):
        process = start(endpoint, "flushed", tmp_path / "marker")
        blocked: dict[str, bool] = {}
        for task in Path(f"/proc/{process.pid}/task").iterdir():
            try:
                text = (task / "status").read_text()
            except FileNotFoundError:
                continue  # a thread that ended meanwhile (the flush's own)
            status = dict(line.split(":\t", 1) for line in text.splitlines())
            name = "main" if task.name == str(process.pid) else status["Name"].strip() + task.name
            blocked[name] = int(status["SigBlk"], 16) & host_signals == host_signals
        process.send_signal(signal.SIGTERM)
        ended_within(process, time.monotonic())
        exported = len(receiver.requests)
    assert blocked.pop("main") is False
    assert len(blocked) >= 3  # gRPC's and the reader's threads at least
    assert all(blocked.values()), blocked
    assert exported == 2  # the flush and the final export
