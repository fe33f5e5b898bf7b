"""N gateway processes on one host (GATEWAY_WORKERS, `otel-gateway serve --workers N`).

One process serves one core (the gRPC call overhead is Python's): workers share the
gRPC and HTTP ports (SO_REUSEPORT, the kernel spreads connections), each with its own
/metrics port (GATEWAY_METRICS_PORT + its index), and share their state through the
store of GATEWAY_STATE_URL (gateway.state). This parent only starts them, restarts one
that dies (after 1 s, doubling up to `MAX_BACKOFF_SECONDS`; a worker that ran for
`STABLE_SECONDS` starts again at 1 s) and, on SIGTERM or SIGINT, drains them all:
each gets SIGTERM and stops as a single gateway does (in-flight requests finish).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

from gateway.server import SHUTDOWN_GRACE_SECONDS
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
STABLE_SECONDS = 60.0
"""A worker that ran this long before it died is restarted after FIRST_BACKOFF_SECONDS."""
PR_SET_PDEATHSIG = 1
"""Linux prctl(2) option: the signal a process gets when its parent dies."""
DRAIN_SECONDS = SHUTDOWN_GRACE_SECONDS + 10.0
"""How long the workers have to stop after SIGTERM before they are killed."""


@dataclass
class Worker:
    """One worker process slot."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float = 0.0


def worker_command(index: int) -> list[str]:
    """How a worker is started: this interpreter, the CLI, its index."""
    return [sys.executable, "-m", "gateway.cli", "serve", "--worker-index", str(index)]


def _die_with_parent() -> None:
    """In the worker, before it runs: SIGTERM when the parent dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_workers(settings: GatewaySettings) -> int:
    """Run `settings.workers` workers until SIGTERM or SIGINT; 0 once all have stopped."""
    stop: list[signal.Signals] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        del frame
        stop.append(signal.Signals(signum))

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    workers = [Worker(i) for i in range(settings.workers)]
    logger.info(
        "starting %d gateway workers on gRPC port %d and HTTP port %d",
        len(workers),
        settings.grpc_port,
        settings.http_port,
    )
    while not stop:
        now = time.monotonic()
        for worker in workers:
            code = worker.process.poll() if worker.process is not None else None
            if worker.process is not None and code is not None:
                lived = now - worker.started
                worker.backoff = (
                    FIRST_BACKOFF_SECONDS
                    if lived >= STABLE_SECONDS or not worker.backoff
                    else min(MAX_BACKOFF_SECONDS, 2 * worker.backoff)
                )
                logger.warning(
                    "gateway worker %d (pid %d) exited with %s after %.0f s; restarting in %.0f s",
                    worker.index,
                    worker.process.pid,
                    code,
                    lived,
                    worker.backoff,
                )
                worker.process, worker.restart_at = None, now + worker.backoff
            if worker.process is None and now >= worker.restart_at:
                # A restarted worker takes its predecessor's name in the state store.
                name = f"{socket.gethostname()}:{settings.grpc_port}/{worker.index}"
                env = {**os.environ, "GATEWAY_STATE_REPLICA_NAME": name}
                worker.process = subprocess.Popen(
                    worker_command(worker.index),
                    env=env,
                    # Its own process group: a Ctrl-C in the terminal reaches the
                    # parent only, which drains each worker once (a second signal
                    # would make a worker stop without draining).
                    process_group=0,
                    preexec_fn=_die_with_parent,
                )
                worker.started = now
        time.sleep(0.1)
    logger.info("received %s: draining %d workers", stop[0].name, len(workers))
    running = [w.process for w in workers if w.process is not None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + DRAIN_SECONDS
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("gateway worker pid %d did not stop in time: killed", process.pid)
            process.kill()
            process.wait()
    logger.info("all gateway workers stopped")
    return 0
