"""An agent's service.instance.id: the same after a restart, different beside another."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from otel_agents.identity import SERVICE_INSTANCE_NAMESPACE, machine_id, slot_instance_id

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
    assert first_id == slot_instance_id(machine_id(), "billing", 0)
    assert second_id == slot_instance_id(machine_id(), "billing", 1)
    first.kill()  # however it ends, the kernel releases its slot
    first.wait(timeout=10)
    restarted, restarted_id = _holder("billing", tmp_path)
    assert restarted_id == first_id
    for process in (second, other, restarted):
        _end(process)
    again, again_id = _holder("billing", tmp_path)
    assert again_id == first_id
    _end(again)


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
    assert first_id == second_id == slot_instance_id(machine_id(), "billing", 0)
    _end(first)
    _end(second)
