"""Hands finished runs from flow-run processes to the runner or worker that started them.

Where this sits: flow-run process ──(*spool* file)──▶ runner/worker process ──▶ OTLP/gRPC.

Under `flow.serve()` and process workers every flow run is a new process. If each of
them exported its own cumulative counters, every run would start new series (a new
`service.instance.id`) or, with a shared id, overwrite the previous run's totals. So a
flow-run process exports nothing: it appends one JSON line per finished run to a file
in a directory named by `OTEL_AGENTS_PREFECT_SPOOL`, which it inherited from the
runner/worker. The runner/worker (one long-lived process, one identity) reads the lines
and owns the cumulative counters.

Each line is written with a single `write()` on an append-only file at the moment the
run finishes, so a flow-run process killed afterwards (SIGTERM skips atexit, SIGKILL
skips everything) loses nothing, and there is nothing to flush at exit.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)

SPOOL_ENV = "OTEL_AGENTS_PREFECT_SPOOL"
"""Directory where flow-run processes leave their records for the runner/worker."""

_OWNER = re.compile(r"otel-agents-prefect-(\d+)-[0-9a-f]+$")


def new_spool_dir() -> Path:
    """A fresh spool path owned by this process (created by the first writer)."""
    name = f"otel-agents-prefect-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    return Path(tempfile.gettempdir()) / name


def spool_owner(directory: str) -> int | None:
    """The pid of the process that reads `directory`, or None if it is not one of ours."""
    match = _OWNER.search(directory.rstrip("/"))
    return int(match.group(1)) if match else None


def inherited_spool(environ: Mapping[str, str]) -> Path | None:
    """The spool this process must write to, if an ancestor process reads one."""
    value = environ.get(SPOOL_ENV, "").strip()
    owner = spool_owner(value) if value else None
    if owner is None or owner == os.getpid():
        return None
    return Path(value)


class SpoolWriter:
    """A `RunSink` that appends each record as one JSON line for the parent to count."""

    def __init__(self, directory: Path) -> None:
        """Write to `directory`; the file is created at the first record."""
        self.directory = directory
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0
        self._failed = False

    def run_started(self, run_id: str) -> None:
        """This process executes flow run `run_id` for the parent (a crash is then its to find)."""
        self._write({"k": "run", "id": run_id})

    def flow_started(self, flow_name: str) -> None:
        """See `RunSink`."""
        self._write({"k": "fs", "f": flow_name})

    def flow_finished(
        self, run_id: str, flow_name: str, state: str, duration_s: float | None
    ) -> None:
        """See `RunSink`."""
        self._write({"k": "ff", "id": run_id, "f": flow_name, "s": state, "d": duration_s})

    def task_started(self, task_name: str, flow_name: str | None) -> None:
        """See `RunSink`."""
        self._write({"k": "ts", "t": task_name, "f": flow_name})

    def task_finished(
        self, task_name: str, flow_name: str | None, state: str, retries: int
    ) -> None:
        """See `RunSink`."""
        self._write({"k": "tf", "t": task_name, "f": flow_name, "s": state, "r": retries})

    def _write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            try:
                os.write(self._file(), line)
            except OSError as exc:
                if not self._failed:
                    self._failed = True
                    _logger.warning(
                        "otel_agents: cannot write run records to %s (%s); runs of this "
                        "process are not counted",
                        self.directory,
                        exc,
                    )

    def _file(self) -> int:
        # A forked child gets its own file: the reader ties a file's end to its pid.
        if self._fd is None or self._pid != os.getpid():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._pid = os.getpid()
            path = self.directory / f"{self._pid}-{uuid.uuid4().hex[:8]}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return self._fd


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists (a zombie counts: its file may still grow)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_pid(path: Path) -> int | None:
    """The pid in a spool file's name."""
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else None
