"""Who this agent is: a `service.instance.id` that survives restarts, and the host's name.

Where this sits: agent code ──(otel_agents: *identity*)──▶ OTLP/gRPC ──▶ gateway.

The gateway's fleet table, the Collector's series (`instance` label) and the
per-agent alerts all key on `service.instance.id`. A random id per process would
make every restart a new agent (the old one looks dead, its series stay for
minutes beside the new ones), so the default follows the OpenTelemetry semantic
conventions' advice for stable ids: a UUID v5 of stable inputs, here the
machine's id, the host name and the service name. The host name separates
containers that share the host's /etc/machine-id (bind-mounted, baked into an
image, or a VM cloned from a template): a container's host name is its own (its
id, or its pod's name), a plain host's does not change when the agent restarts.

In Kubernetes the conventions name the id: the pod annotation
`resource.opentelemetry.io/service.instance.id` when given (through the Downward
API's annotations file), else `<namespace>.<pod>.<container>` from the pod's
variables, the service account's namespace file and HOSTNAME.

Several processes of one service on one machine must still differ. Each process
takes the lowest free *slot* for its (machine, service): slot 0 is the plain
id, slot n mixes n in. A slot is held by an advisory lock on a file, which the
kernel releases when the process ends however it ends, so a restarted process
gets its slot, and with it its id, back.

The lock files' names are predictable, so they live only in a directory no other user
can write: the user's runtime directory, else one in /tmp created 0700 and checked
(ours, not a symlink, not group/world writable) through the descriptor that is then
used; lock files are opened without following links. A clean exit removes them.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import socket
import stat
import tempfile
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

_logger = logging.getLogger(__name__)

SERVICE_INSTANCE_NAMESPACE = uuid.UUID("4d63009a-8d0f-11ee-aad7-4c796ed8e320")
"""The UUID v5 namespace the semantic conventions give for `service.instance.id`."""

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
MAX_SLOTS = 64
"""Processes of one service on one machine that get ids of their own; more share the last."""

POD_ANNOTATION = "resource.opentelemetry.io/service.instance.id"
"""The pod annotation that names an agent's id in Kubernetes (semantic conventions)."""
ANNOTATIONS_FILE = Path("/etc/podinfo/annotations")
"""Where the Downward API's annotations volume is usually mounted (Kubernetes' docs);
OTEL_AGENTS_POD_ANNOTATIONS_FILE names another."""
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
"""The pod's namespace, as the service account's token volume gives it."""
POD_VARIABLES = {
    "k8s.namespace.name": ("K8S_NAMESPACE_NAME", "POD_NAMESPACE"),
    "k8s.pod.name": ("K8S_POD_NAME", "POD_NAME", "HOSTNAME"),
    "k8s.container.name": ("K8S_CONTAINER_NAME", "CONTAINER_NAME"),
}
"""Each name's environment variables (the Downward API's usual names), first found wins;
the same key in OTEL_RESOURCE_ATTRIBUTES wins over all of them."""

_lock = threading.Lock()
_held: dict[tuple[str, str], list[_Held]] = {}
"""(machine, service) → the slots this process holds for it: pid, instance id, lock,
and whether a live `setup_metrics` uses it."""


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


def machine_key() -> str:
    """What the default id is made of besides the service: the machine's id and the
    host name, so that containers sharing a machine id still differ."""
    return f"{machine_id()}\x00{host_name()}"


def kubernetes_instance_id(
    attributes: Mapping[str, str], environ: Mapping[str, str], root: Path = Path("/")
) -> str | None:
    """The semantic conventions' id of a Kubernetes container, None outside Kubernetes
    or when its namespace or pod name is unknown. `root` prefixes the files read."""
    if not environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    annotations = Path(environ.get("OTEL_AGENTS_POD_ANNOTATIONS_FILE") or ANNOTATIONS_FILE)
    annotated = _annotation(_under(root, annotations), POD_ANNOTATION)
    if annotated:
        return annotated
    names = {
        key: attributes.get(key) or next((environ[v] for v in variables if environ.get(v)), "")
        for key, variables in POD_VARIABLES.items()
    }
    if not names["k8s.namespace.name"]:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            names["k8s.namespace.name"] = (
                _under(root, NAMESPACE_FILE).read_text(encoding="utf-8").strip()
            )
    if not (names["k8s.namespace.name"] and names["k8s.pod.name"]):
        return None
    return ".".join(name for name in names.values() if name)


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to(path.anchor) if path.is_absolute() else path


def _annotation(path: Path, key: str) -> str | None:
    """`key`'s value in a Downward API annotations file (lines `key="value"`)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        name, _, quoted = line.partition("=")
        if name.strip() == key:
            with contextlib.suppress(ValueError):
                value = json.loads(quoted)
                return value.strip() if isinstance(value, str) and value.strip() else None
    return None


def slot_instance_id(machine: str, service_name: str, slot: int) -> str:
    """The instance id of `slot` for a service on a machine (a UUID v5)."""
    # The machine id is hashed in, never sent: systemd asks to keep it confidential.
    name = f"{machine}\x00{service_name}" if slot == 0 else f"{machine}\x00{service_name}\x00{slot}"
    return str(uuid.uuid5(SERVICE_INSTANCE_NAMESPACE, name))


def stable_instance_id(
    service_name: str,
    lock_dir: Path | None = None,
    attributes: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """This process's instance id for `service_name`: the same after a restart.

    In Kubernetes, the semantic conventions' id (`kubernetes_instance_id`; the
    resource's `attributes` may name the pod). Elsewhere a UUID v5 of the machine's
    id, the host name and the service name. The first process of a service on this
    machine or in this container gets slot 0, a second one running at the same time
    slot 1 (mixed into the id), and so on. Without a usable lock directory every
    process gets slot 0 (one per service and machine is then assumed).
    """
    pod = kubernetes_instance_id(attributes or {}, os.environ if environ is None else environ)
    machine = f"k8s\x00{pod}" if pod else machine_key()
    key = (machine, service_name)
    with _lock:
        held = [h for h in _held.get(key, []) if h.pid == os.getpid()]
        free = next((h for h in held if not h.in_use), None)
        if free is not None:  # set up again after a shutdown: the same agent
            free.in_use = True
            return free.instance
        # Another live setup of this service in this process is another agent: flock
        # sees this process's own locks as taken, so this takes the next free slot.
        slot, lock = _take_slot(machine, service_name, lock_dir or default_lock_dir())
        if pod:
            instance = pod if slot == 0 else f"{pod}.{slot}"
        else:
            instance = slot_instance_id(machine, service_name, slot)
        held.append(_Held(os.getpid(), instance, lock))
        _held[key] = held
        return instance


def release_instance_id(instance: str) -> None:
    """The `setup_metrics` that took `instance` has shut down: a later one in this
    process may take it again. Takes no lock (it may run in a signal handler); the
    slot stays held until the process ends."""
    for held in list(_held.values()):
        for h in list(held):
            if h.instance == instance and h.pid == os.getpid():
                h.in_use = False


def child_instance_id(service_name: str, parent_id: str) -> str:
    """The instance id of a forked child whose parent is `parent_id`.

    The child's own slot (as if it had been started separately); without slot locks,
    which would give it its parent's id, a UUID v5 of the parent's id and the child's
    pid.
    """
    instance = stable_instance_id(service_name)
    if instance == parent_id:
        instance = str(uuid.uuid5(SERVICE_INSTANCE_NAMESPACE, f"{parent_id}\x00{os.getpid()}"))
    return instance


def default_lock_dir() -> Path:
    """Where slot locks live: the user's runtime directory, else the temporary one."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path(tempfile.gettempdir())
    return base / f"otel-agents-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


@dataclass
class _Held:
    pid: int
    instance: str
    lock: _SlotLock | None
    in_use: bool = True


class _SlotLock(NamedTuple):
    """A held slot: the open, locked file and its directory, to remove it at exit."""

    fd: int
    dir_fd: int
    name: str


def _take_slot(machine: str, service_name: str, lock_dir: Path) -> tuple[int, _SlotLock | None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: one process per service and machine
        return 0, None
    dir_fd = _open_private_dir(lock_dir)
    if dir_fd is None:
        return 0, None
    digest = hashlib.sha256(f"{machine}\x00{service_name}".encode()).hexdigest()[:24]
    for slot in range(MAX_SLOTS):
        name = f"{digest}.{slot}.lock"
        fd = _lock_file(fcntl, dir_fd, name)
        if fd == _BUSY:
            continue
        if fd is None:  # unusable: logged; slot 0 without a lock
            os.close(dir_fd)
            return 0, None
        _register_cleanup()
        return slot, _SlotLock(fd, dir_fd, name)
    os.close(dir_fd)
    _logger.warning(
        "otel_agents: over %d processes of service %r on this machine share one instance "
        "id; set service.instance.id in OTEL_RESOURCE_ATTRIBUTES to tell them apart",
        MAX_SLOTS,
        service_name,
    )
    return MAX_SLOTS - 1, None


_BUSY = -1


def _lock_file(fcntl: Any, dir_fd: int, name: str) -> int | None:
    """An open file descriptor holding the lock on `name`, _BUSY if another process
    holds it, None if it cannot be used."""
    # O_NOFOLLOW: never write where a planted link points. The directory is ours, so
    # only this user can have created what is in it, but the check costs nothing.
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(3):  # the file may be removed between open and lock: try again
        try:
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            _logger.debug("otel_agents: cannot open slot lock %s (%s); using slot 0", name, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return _BUSY
        # A process that ended cleanly removes its file: the lock just taken must be
        # on the file that is still there, or two processes would share a slot.
        try:
            same = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if same:
            return fd
        os.close(fd)
    return None


def _open_private_dir(lock_dir: Path) -> int | None:
    """A descriptor of `lock_dir`, created 0700 if missing, or None (warned once) if
    another user could write in it: not ours, a symlink, or group/world writable."""
    with contextlib.suppress(OSError):
        # A runtime directory named but not there yet (a service's XDG_RUNTIME_DIR
        # before its first process): created for this user only, as the lock one is.
        lock_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError, OSError):
        os.mkdir(lock_dir, 0o700)
    try:
        dir_fd = os.open(lock_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        link = os.path.islink(lock_dir)
        _unsafe_dir(lock_dir, "is a symlink" if link else f"cannot be opened ({exc})")
        return None
    info = os.fstat(dir_fd)
    problem: str | None = None
    if info.st_uid != os.geteuid():
        problem = f"belongs to uid {info.st_uid}, not to this user ({os.geteuid()})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    if problem is not None:
        os.close(dir_fd)
        _unsafe_dir(lock_dir, problem)
        return None
    return dir_fd


_warned_dirs: set[Path] = set()


def _unsafe_dir(lock_dir: Path, problem: str) -> None:
    if lock_dir in _warned_dirs:
        return
    _warned_dirs.add(lock_dir)
    _logger.warning(
        "otel_agents: slot lock directory %s %s; not using it, so every process of a "
        "service on this machine gets the same instance id. Remove it, set "
        "XDG_RUNTIME_DIR to a directory only this user can write, or set "
        "service.instance.id in OTEL_RESOURCE_ATTRIBUTES",
        lock_dir,
        problem,
    )


_cleanup_registered = False


def _register_cleanup() -> None:
    global _cleanup_registered
    if not _cleanup_registered:
        _cleanup_registered = True
        atexit.register(release_slots)
        os.register_at_fork(after_in_child=_forget_parent_slots)


def release_slots() -> None:
    """Remove the lock files this process holds and free its slots (run at exit)."""
    with _lock:
        for key, slots in list(_held.items()):
            for held in slots:
                if held.lock is not None and held.pid == os.getpid():
                    # Removed while still locked: see the inode check in `_lock_file`.
                    with contextlib.suppress(OSError):
                        os.unlink(held.lock.name, dir_fd=held.lock.dir_fd)
                    _close(held.lock)
            del _held[key]


def _forget_parent_slots() -> None:
    # The child's copies of the parent's descriptors would keep the parent's slots
    # locked after the parent ends; closing them (no unlock) leaves the parent's lock.
    global _lock
    _lock = threading.Lock()
    for slots in _held.values():
        for held in slots:
            if held.lock is not None:
                _close(held.lock)
    _held.clear()


def _close(lock: _SlotLock) -> None:
    for fd in (lock.fd, lock.dir_fd):
        with contextlib.suppress(OSError):
            os.close(fd)
