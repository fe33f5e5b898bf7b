"""The main thread's signal mask survives a Ctrl-C that lands while the library blocks
signals to start its threads: a main thread left blocking SIGINT and SIGTERM never
receives either again (no thread of the process takes them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from otel_agents.signals import signals_blocked

REPO = Path(__file__).resolve().parents[3]
HOST_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def current_mask() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, ()))


def test_an_interrupt_right_after_blocking_restores_the_mask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python runs a pending handler right after a C call returns: as here, when SIGINT
    arrived just before the block."""
    real = signal.pthread_sigmask

    def interrupted(how: int, mask: object) -> set[signal.Signals]:
        previous = real(how, mask)  # type: ignore[arg-type]
        if how == signal.SIG_BLOCK and mask:
            raise KeyboardInterrupt
        return previous

    before = current_mask()
    monkeypatch.setattr(signal, "pthread_sigmask", interrupted)
    with pytest.raises(KeyboardInterrupt), signals_blocked():
        pass
    monkeypatch.setattr(signal, "pthread_sigmask", real)
    assert current_mask() == before


# force_flush(0) in a loop (each call starts a thread with signals blocked) while Ctrl-C
# arrives every 0.5 ms; the host catches KeyboardInterrupt and goes on, as hosts do.
STORMED = textwrap.dedent(
    """
    import signal, sys, time
    from otel_agents import setup_metrics

    armed = False

    def interrupt(signum, frame):
        if armed:  # only inside the host's try: the probe itself must live on
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    telemetry = setup_metrics("mask-agent", "connector", endpoint="http://127.0.0.1:9")
    end = time.monotonic() + float(sys.argv[1])
    print("ready", flush=True)
    while True:
        try:
            armed = True
            if time.monotonic() >= end:
                break
            telemetry.force_flush(0)
            armed = False
        except KeyboardInterrupt:
            armed = False
    print(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, ())), flush=True)
    time.sleep(60)  # until SIGTERM
    """
)


@pytest.mark.slow
def test_a_ctrl_c_storm_leaves_the_main_thread_able_to_take_signals(tmp_path: Path) -> None:
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "PYTHONPATH": str(REPO),
        "OTEL_AGENTS_API_KEY": "test-key",
    }
    outcomes = []
    for run in range(3):  # before the fix, 3 of 10 such runs ended with both signals blocked
        with (tmp_path / f"stderr{run}").open("w") as errors:
            process = subprocess.Popen(
                [sys.executable, "-c", STORMED, "2.5"],
                env=environ,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            process.send_signal(signal.SIGINT)
            time.sleep(0.0005)
        mask = process.stdout.readline().strip()
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            status = None  # SIGTERM never reached the process
        process.stdout.close()
        outcomes.append((mask, status))
    assert outcomes == [("[]", -signal.SIGTERM)] * 3
