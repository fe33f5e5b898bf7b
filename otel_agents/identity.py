"""Who this agent is: a `service.instance.id` that survives restarts, and the host's name.

Where this sits: agent code ──(otel_agents: *identity*)──▶ OTLP/gRPC ──▶ gateway.

The gateway's fleet table, the Collector's series (`instance` label) and the
per-agent alerts all key on `service.instance.id`. A random id per process would
make every restart a new agent (the old one looks dead, its series stay for
minutes beside the new ones), so the default follows the OpenTelemetry semantic
conventions' advice for stable ids: a UUID v5 of stable inputs, here the
machine's id and the service name.

Several processes of one service on one machine must still differ. Each process
takes the lowest free *slot* for its (machine, service): slot 0 is the plain
UUID, slot n mixes n in. A slot is held by an advisory lock on a file, which the
kernel releases when the process ends however it ends, so a restarted process
gets its slot, and with it its id, back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import tempfile
import threading
import uuid
from pathlib import Path
from typing import IO

_logger = logging.getLogger(__name__)

SERVICE_INSTANCE_NAMESPACE = uuid.UUID("4d63009a-8d0f-11ee-aad7-4c796ed8e320")
"""The UUID v5 namespace the semantic conventions give for `service.instance.id`."""

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
MAX_SLOTS = 64
"""Processes of one service on one machine that get ids of their own; more share the last."""

_lock = threading.Lock()
_held: dict[tuple[str, str], tuple[int, str, IO[bytes] | None]] = {}
"""(machine, service) → (pid, instance id, open lock file) of this process."""


def machine_id() -> str:
    """A stable id of this machine: systemd's machine-id, else the host name."""
    for path in MACHINE_ID_FILES:
        with contextlib.suppress(OSError):
            text = Path(path).read_text(encoding="ascii", errors="replace").strip()
            if text:
                return text
    return socket.gethostname()


def host_name() -> str:
    """This machine's host name (the `host.name` resource attribute)."""
    return socket.gethostname()


def slot_instance_id(machine: str, service_name: str, slot: int) -> str:
    """The instance id of `slot` for a service on a machine (a UUID v5)."""
    # The machine id is hashed in, never sent: systemd asks to keep it confidential.
    name = f"{machine}\x00{service_name}" if slot == 0 else f"{machine}\x00{service_name}\x00{slot}"
    return str(uuid.uuid5(SERVICE_INSTANCE_NAMESPACE, name))


def stable_instance_id(service_name: str, lock_dir: Path | None = None) -> str:
    """This process's instance id for `service_name`: the same after a restart.

    The first process of a service on this machine gets slot 0, a second one running
    at the same time slot 1, and so on. Without a usable lock directory every process
    gets slot 0 (one per service and machine is then assumed).
    """
    machine = machine_id()
    key = (machine, service_name)
    with _lock:
        held = _held.get(key)
        if held is not None and held[0] == os.getpid():
            return held[1]
        slot, handle = _take_slot(machine, service_name, lock_dir or default_lock_dir())
        instance = slot_instance_id(machine, service_name, slot)
        _held[key] = (os.getpid(), instance, handle)
        return instance


def default_lock_dir() -> Path:
    """Where slot locks live: the user's runtime directory, else the temporary one."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path(tempfile.gettempdir())
    return base / f"otel-agents-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def _take_slot(machine: str, service_name: str, lock_dir: Path) -> tuple[int, IO[bytes] | None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: one process per service and machine
        return 0, None
    digest = hashlib.sha256(f"{machine}\x00{service_name}".encode()).hexdigest()[:24]
    try:
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        _logger.debug("otel_agents: no slot locks in %s (%s); using slot 0", lock_dir, exc)
        return 0, None
    for slot in range(MAX_SLOTS):
        path = lock_dir / f"{digest}.{slot}.lock"
        try:
            handle = open(path, "ab")  # noqa: SIM115 (held open for the process's lifetime)
        except OSError as exc:
            _logger.debug("otel_agents: cannot open %s (%s); using slot 0", path, exc)
            return 0, None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        os.set_inheritable(handle.fileno(), False)
        return slot, handle
    _logger.warning(
        "otel_agents: over %d processes of service %r on this machine share one instance "
        "id; set service.instance.id in OTEL_RESOURCE_ATTRIBUTES to tell them apart",
        MAX_SLOTS,
        service_name,
    )
    return MAX_SLOTS - 1, None
