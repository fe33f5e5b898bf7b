"""A Redis server of its own on a free loopback port (Debian's `redis-server`): the
gateway's shared state store (GATEWAY_STATE_URL) in tests and local stacks.

It keeps nothing on disk (`--save '' --appendonly no`): a restart starts empty, as a
store that lost its memory would. `stop`, `pause` and `resume` act on exactly the
process started here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from stack.local import free_port


class RedisServer:
    """One `redis-server` process; `start` again after `stop` for one that forgot all."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The GATEWAY_STATE_URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The command line of this server (RuntimeError naming what is missing)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: scripts/install-system-deps.sh")
        return [
            binary,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
        ]

    def start(self, timeout: float = 20.0) -> None:
        """Start it and wait until it answers PING (RuntimeError naming what is missing)."""
        command = self.command()
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_answers(timeout)

    def wait_answers(
        self, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None
    ) -> None:
        """Until it answers PING; RuntimeError when its process (`process`, else the one
        started here) exits or `timeout` passes first."""
        process = process or self.process
        deadline = time.monotonic() + timeout
        while not self.answers():
            exited = process is not None and process.poll() is not None
            if exited or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: see {self.workdir}/redis.log")
            time.sleep(0.05)

    def answers(self) -> bool:
        """True when it replies to PING within a second."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """End it (killed by default: no goodbye to its clients) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a paused one cannot die on SIGTERM
            self.process.send_signal(sig)
            self.process.wait(timeout=10)
        self.process = None
