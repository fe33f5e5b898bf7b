"""The supervisor of the native stack, with real short-lived processes."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stack.local import LocalStack, Process, free_port
from stack.supervisor import Backoff, Supervisor, describe_exit

EXIT_3 = [sys.executable, "-c", "import os, sys; print('run', os.environ['RUN_TAG']); sys.exit(3)"]
SLEEPER = [
    sys.executable,
    "-c",
    "import time; print('sleeper-running', flush=True); time.sleep(60)",
]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    local = LocalStack(tmp_path, tenants_file=tmp_path / "unused.json")
    yield local
    local.stop_all()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_an_exited_process_is_started_again_the_same_way(stack: LocalStack) -> None:
    process = stack.start_process("crasher", EXIT_3, {"RUN_TAG": "same-env"})
    clock, reports = Clock(), list[str]()
    supervisor = Supervisor(stack, backoff=Backoff(initial=1.0), report=reports.append, clock=clock)
    supervisor.watch(process)
    first_pid = process.popen.pid
    process.popen.wait()

    supervisor.poll()  # notices the exit, schedules the restart
    assert process.popen.pid == first_pid
    assert "crasher" in reports[0]
    assert "exited with 3" in reports[0]
    assert "restarting it in 1 s" in reports[0]
    clock.now += 0.9
    supervisor.poll()
    assert process.popen.pid == first_pid  # the back-off is not over
    clock.now += 0.1
    supervisor.poll()
    assert process.popen.pid != first_pid
    assert process.popen.wait(timeout=10) == 3
    assert process in stack.processes

    log = process.log.read_text()
    assert log.count("run same-env") == 2  # same argv and environment, log appended
    assert "exited with 3; restarted by the supervisor" in log
    assert [(r.name, r.exit_code, r.delay) for r in supervisor.restarts] == [("crasher", 3, 1.0)]


def test_back_off_doubles_up_to_the_maximum_and_resets_after_a_long_run(
    stack: LocalStack,
) -> None:
    process = stack.start_process("crasher", EXIT_3, {"RUN_TAG": "x"})
    clock = Clock()
    backoff = Backoff(initial=1.0, maximum=5.0, reset_after=60.0)
    supervisor = Supervisor(stack, backoff=backoff, report=lambda _: None, clock=clock)
    supervisor.watch(process)
    for _ in range(5):
        process.popen.wait(timeout=10)
        supervisor.poll()  # exit noticed
        clock.now += 10.0  # past any back-off, well within reset_after
        supervisor.poll()  # restarted
    assert [r.delay for r in supervisor.restarts] == [1.0, 2.0, 4.0, 5.0, 5.0]

    # This run stays up past reset_after: its exit is a first exit again.
    process.popen.wait(timeout=10)
    clock.now += 61.0
    supervisor.poll()
    clock.now += 1.0
    supervisor.poll()
    assert supervisor.restarts[-1].delay == 1.0
    assert supervisor.restarts[-1].uptime >= 61.0


def test_a_killed_process_is_back_within_the_initial_delay(stack: LocalStack) -> None:
    process = stack.start_process("sleeper", SLEEPER, {})
    reports: list[str] = []
    with Supervisor(stack, backoff=Backoff(initial=0.2), report=reports.append, interval=0.05) as s:
        s.watch(process)
        first = process.popen.pid
        wait_until(lambda: "sleeper-running" in process.log.read_text())
        killed_at = time.monotonic()
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: process.popen.pid != first and process.popen.poll() is None)
        back_after = time.monotonic() - killed_at
        wait_until(lambda: process.log.read_text().count("sleeper-running") == 2)
    assert back_after < 2.0
    assert any("exited with -9 (SIGKILL)" in r for r in reports)
    assert process.popen.poll() is None  # closing the supervisor leaves processes alone


def test_a_deliberate_stop_is_not_fought(stack: LocalStack) -> None:
    stopped_here = stack.start_process("stopped-here", SLEEPER, {})
    stopped_by_stack = stack.start_process("stopped-by-stack", SLEEPER, {})
    kept = stack.start_process("kept", SLEEPER, {})
    with Supervisor(
        stack, backoff=Backoff(initial=0.05), report=lambda _: None, interval=0.01
    ) as s:
        s.watch(stopped_here, stopped_by_stack, kept)
        s.stop(stopped_here)
        stack.stop(stopped_by_stack)  # around the supervisor: still left alone
        time.sleep(0.5)  # several polls and back-off periods
        assert s.watched() == [kept]
    assert stopped_here.popen.poll() is not None
    assert stopped_by_stack.popen.poll() is not None
    assert s.restarts == []


def test_nothing_is_restarted_once_closed(stack: LocalStack) -> None:
    process = stack.start_process("sleeper", SLEEPER, {})
    supervisor = Supervisor(stack, backoff=Backoff(initial=0.05), report=lambda _: None).start()
    supervisor.watch(process)
    supervisor.close()
    pid = process.popen.pid
    stack.stop_all()  # as the demo's shutdown does, after close()
    time.sleep(0.3)
    supervisor.poll()
    assert process.popen.pid == pid
    assert process.popen.poll() is not None
    assert stack.processes == []


def test_what_the_dead_process_left_in_its_group_is_killed_before_the_restart(
    stack: LocalStack, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    parent = (
        "import subprocess, sys, pathlib; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid)); sys.exit(1)"
    )
    process = stack.start_process("parent", [sys.executable, "-c", parent], {})
    clock = Clock()
    supervisor = Supervisor(stack, backoff=Backoff(initial=1.0), report=lambda _: None, clock=clock)
    supervisor.watch(process)
    process.popen.wait(timeout=10)
    child = int(pid_file.read_text())
    assert _alive(child)  # an orphan still holding whatever it held
    supervisor.poll()
    clock.now += 1.0
    supervisor.poll()
    wait_until(lambda: not _alive(child))
    assert process.popen.wait(timeout=10) == 1
    with contextlib.suppress(ProcessLookupError):  # the new run's own orphan
        os.killpg(process.popen.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_failed_restart_is_tried_again_later(stack: LocalStack, tmp_path: Path) -> None:
    process = stack.start_process("crasher", EXIT_3, {"RUN_TAG": "x"})
    clock, reports = Clock(), list[str]()
    supervisor = Supervisor(stack, backoff=Backoff(initial=1.0), report=reports.append, clock=clock)
    supervisor.watch(process)
    process.popen.wait(timeout=10)
    process.argv = [str(tmp_path / "no-such-binary")]
    supervisor.poll()
    clock.now += 1.0
    supervisor.poll()
    assert "could not be restarted" in reports[-1]
    assert "next try in 2 s" in reports[-1]
    process.argv = EXIT_3
    clock.now += 2.0
    supervisor.poll()
    assert process.popen.wait(timeout=10) == 3


def test_exit_codes_are_described() -> None:
    assert describe_exit(3) == "3"
    assert describe_exit(0) == "0"
    assert describe_exit(-9) == "-9 (SIGKILL)"
    assert describe_exit(-15) == "-15 (SIGTERM)"


def test_the_ready_url_is_reported_once_the_process_answers(stack: LocalStack) -> None:
    # A tiny HTTP server as the supervised process.
    server = (
        "import http.server, socketserver, sys; "
        "h = type('H', (http.server.BaseHTTPRequestHandler,), {'do_GET': lambda s: "
        "(s.send_response(200), s.end_headers())}); "
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), h).serve_forever()"
    )
    port = free_port()
    process = stack.start_process(
        "web", [sys.executable, "-c", server, str(port)], {}, ready_url=f"http://127.0.0.1:{port}/"
    )
    reports: list[str] = []
    with Supervisor(stack, backoff=Backoff(initial=0.1), report=reports.append, interval=0.05) as s:
        stack.wait_ready(process, timeout=10)
        s.watch(process)
        process.popen.kill()
        wait_until(lambda: any("ready again" in r for r in reports))
    assert _restarted(process, reports)


def _restarted(process: Process, reports: list[str]) -> bool:
    return any(
        f"{process.name} restarted (pid {process.popen.pid}, restart 1)" in r for r in reports
    )
