"""An agent's service.instance.id: the same after a restart, different beside another."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from otel_agents.identity import (
    SERVICE_INSTANCE_NAMESPACE,
    child_instance_id,
    kubernetes_instance_id,
    machine_key,
    release_slots,
    slot_instance_id,
    stable_instance_id,
)

REPO = Path(__file__).resolve().parents[3]

# Prints its instance id, then holds it until stdin closes.
HOLDER = (
    "import sys\n"
    "from otel_agents.identity import stable_instance_id\n"
    "print(stable_instance_id(sys.argv[1]), flush=True)\n"
    "sys.stdin.read()\n"
)


def _holder(service: str, lock_dir: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, service],
        env={**os.environ, "PYTHONPATH": str(REPO), "XDG_RUNTIME_DIR": str(lock_dir)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def _end(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=10)


def test_a_restarted_process_gets_its_id_back_a_concurrent_one_gets_another(
    tmp_path: Path,
) -> None:
    first, first_id = _holder("billing", tmp_path)
    second, second_id = _holder("billing", tmp_path)  # same service, same machine, same time
    other, other_id = _holder("nightly", tmp_path)
    assert len({first_id, second_id, other_id}) == 3
    assert first_id == slot_instance_id(machine_key(), "billing", 0)
    assert second_id == slot_instance_id(machine_key(), "billing", 1)
    first.kill()  # however it ends, the kernel releases its slot
    first.wait(timeout=10)
    restarted, restarted_id = _holder("billing", tmp_path)
    assert restarted_id == first_id
    for process in (second, other, restarted):
        _end(process)
    again, again_id = _holder("billing", tmp_path)
    assert again_id == first_id
    _end(again)
    # A clean exit removes the process's lock file (the killed one's was reused).
    assert not list(tmp_path.glob("otel-agents-*/*")), "lock files left behind"


def test_a_runtime_directory_not_there_yet_is_created_and_slots_still_differ(
    tmp_path: Path,
) -> None:
    runtime = tmp_path / "not" / "yet"  # XDG_RUNTIME_DIR of a service before its first start
    first, first_id = _holder("billing", runtime)
    second, second_id = _holder("billing", runtime)
    try:
        assert first_id == slot_instance_id(machine_key(), "billing", 0)
        assert second_id == slot_instance_id(machine_key(), "billing", 1)
    finally:
        _end(first)
        _end(second)


def test_ids_are_uuid_v5_in_the_semantic_conventions_namespace() -> None:
    instance = slot_instance_id("machine-1", "billing", 0)
    assert uuid.UUID(instance).version == 5
    assert instance == str(uuid.uuid5(SERVICE_INSTANCE_NAMESPACE, "machine-1\x00billing"))
    # Another machine, service or slot is another agent.
    assert instance != slot_instance_id("machine-2", "billing", 0)
    assert instance != slot_instance_id("machine-1", "orders", 0)
    assert instance != slot_instance_id("machine-1", "billing", 1)
    # The machine id itself is never sent.
    assert "machine-1" not in instance


def test_without_a_usable_lock_directory_every_process_gets_slot_0(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    first, first_id = _holder("billing", blocked)  # its lock directory cannot be created
    second, second_id = _holder("billing", blocked)
    assert first_id == second_id == slot_instance_id(machine_key(), "billing", 0)
    _end(first)
    _end(second)


# -- containers and Kubernetes ----------------------------------------------------------


# As two containers of one image on one node: each its own host name and temporary
# directory (TMPDIR: a tmpfs mounted on /tmp would hide a checkout under /tmp), both
# the host's /etc/machine-id. The holder prints the id, then holds it until stdin closes.
def _container(host: str, service: str) -> tuple[subprocess.Popen[str], str]:
    script = (
        f"hostname {host} && export TMPDIR=$(mktemp -d) && exec env -u XDG_RUNTIME_DIR "
        f"PYTHONPATH={shlex.quote(str(REPO))} {sys.executable} -c {shlex.quote(HOLDER)} {service}"
    )
    process = subprocess.Popen(
        ["unshare", "--uts", "--mount", "sh", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line, process.stderr.read() if process.stderr else ""
    return process, line


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="new UTS and mount namespaces need root and unshare(1)",
)


@needs_root
def test_containers_sharing_the_machine_id_get_ids_of_their_own_and_keep_them() -> None:
    first, first_id = _container("orders-7f9c", "orders-connector")
    second, second_id = _container("orders-b21d", "orders-connector")
    try:
        assert first_id != second_id
        machine = machine_key().split("\x00")[0]
        assert first_id == slot_instance_id(f"{machine}\x00orders-7f9c", "orders-connector", 0)
        assert second_id == slot_instance_id(f"{machine}\x00orders-b21d", "orders-connector", 0)
    finally:
        for process in (first, second):
            _end(process)
    # The same container started again (same host name) is the same agent.
    again, again_id = _container("orders-7f9c", "orders-connector")
    _end(again)
    assert again_id == first_id


POD = {
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "POD_NAMESPACE": "shop",
    "POD_NAME": "orders-5d8f7c9b4-x2k8q",
    "CONTAINER_NAME": "connector",
}


def test_in_kubernetes_the_id_is_namespace_pod_and_container(tmp_path: Path) -> None:
    assert kubernetes_instance_id({}, POD, tmp_path) == "shop.orders-5d8f7c9b4-x2k8q.connector"
    # OTEL_RESOURCE_ATTRIBUTES' names win over the variables.
    named = {"k8s.pod.name": "orders-0", "k8s.container.name": "main"}
    assert kubernetes_instance_id(named, POD, tmp_path) == "shop.orders-0.main"
    # Without its variables: HOSTNAME (the pod's name) and the service account's namespace.
    account = tmp_path / "var/run/secrets/kubernetes.io/serviceaccount"
    account.mkdir(parents=True)
    (account / "namespace").write_text("billing\n")
    bare = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "HOSTNAME": "billing-0"}
    assert kubernetes_instance_id({}, bare, tmp_path) == "billing.billing-0"
    # Outside Kubernetes, or with no pod name, the default id applies.
    assert kubernetes_instance_id({}, {"POD_NAME": "x", "POD_NAMESPACE": "y"}, tmp_path) is None
    assert kubernetes_instance_id({}, {"KUBERNETES_SERVICE_HOST": "1"}, tmp_path) is None


def test_in_kubernetes_the_pod_annotation_wins(tmp_path: Path) -> None:
    podinfo = tmp_path / "etc/podinfo"
    podinfo.mkdir(parents=True)
    (podinfo / "annotations").write_text(
        'kubectl.kubernetes.io/restartedAt="2026-12-01T10:00:00Z"\n'
        'resource.opentelemetry.io/service.instance.id="orders-eu-1"\n'
    )
    assert kubernetes_instance_id({}, POD, tmp_path) == "orders-eu-1"
    elsewhere = tmp_path / "annotations"
    elsewhere.write_text('resource.opentelemetry.io/service.instance.id="orders-eu-2"\n')
    env = {**POD, "OTEL_AGENTS_POD_ANNOTATIONS_FILE": str(elsewhere)}
    assert kubernetes_instance_id({}, env, Path("/")) == "orders-eu-2"


def test_in_kubernetes_a_second_process_of_the_service_gets_a_slot_of_its_own(
    tmp_path: Path,
) -> None:
    env = {**POD, "POD_NAME": f"orders-{uuid.uuid4().hex[:6]}"}
    first = stable_instance_id("orders", tmp_path, environ=env)
    assert first == f"shop.{env['POD_NAME']}.connector"
    # This process holds slot 0; another process of the service in the pod takes slot 1.
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, json; from pathlib import Path; "
            "from otel_agents.identity import stable_instance_id as stable; "
            "print(stable('orders', Path(sys.argv[1]), environ=json.loads(sys.argv[2])))",
            str(tmp_path),
            json.dumps(env),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == f"{first}.1"


NOBODY = 65534


def _unsafe_dir_is_not_used(lock_dir: Path, service: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_agents.identity"):
        first = stable_instance_id(service, lock_dir)
        stable_instance_id(service + "-other", lock_dir)
    release_slots()
    assert first == slot_instance_id(machine_key(), service, 0)
    warnings = [r.getMessage() for r in caplog.records if str(lock_dir) in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per directory, not per service
    assert "service.instance.id" in warnings[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_lock_directory_owned_by_another_user_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lock_dir = tmp_path / "otel-agents-0"
    lock_dir.mkdir(mode=0o700)
    os.chown(lock_dir, NOBODY, NOBODY)  # created first by someone else
    _unsafe_dir_is_not_used(lock_dir, "owned-by-nobody", caplog)
    assert list(lock_dir.iterdir()) == []
    assert "belongs to uid 65534" in caplog.text


def test_a_symlinked_lock_directory_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    lock_dir = tmp_path / "otel-agents-0"
    lock_dir.symlink_to(target)
    _unsafe_dir_is_not_used(lock_dir, "symlinked", caplog)
    assert list(target.iterdir()) == []
    assert "is a symlink" in caplog.text


def test_a_world_writable_lock_directory_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lock_dir = tmp_path / "otel-agents-0"
    lock_dir.mkdir()
    lock_dir.chmod(0o777)
    _unsafe_dir_is_not_used(lock_dir, "world-writable", caplog)
    assert list(lock_dir.iterdir()) == []


def test_a_symlink_planted_as_a_lock_file_is_not_followed(tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    first = stable_instance_id("planted", lock_dir)  # learn the file name, then free it
    [name] = [path.name for path in lock_dir.iterdir()]
    release_slots()
    (lock_dir / name).symlink_to(victim)
    assert stable_instance_id("planted", lock_dir) == first  # slot 0, without a lock
    release_slots()
    assert not victim.exists()
    assert (lock_dir / name).is_symlink()


def test_a_new_lock_directory_is_private(tmp_path: Path) -> None:
    lock_dir = tmp_path / "otel-agents-0"
    stable_instance_id("private", lock_dir)
    release_slots()
    assert lock_dir.stat().st_mode & 0o777 == 0o700
    assert list(lock_dir.iterdir()) == []  # removed by release_slots


def test_without_slot_locks_a_child_id_comes_from_its_parents_and_its_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(blocked))  # no lock directory possible
    parent = slot_instance_id(machine_key(), "no-locks", 0)
    child = child_instance_id("no-locks", parent)
    expected = uuid.uuid5(SERVICE_INSTANCE_NAMESPACE, f"{parent}\x00{os.getpid()}")
    assert child == str(expected)
    assert child_instance_id("no-locks", parent) == child  # deterministic
