"""`make demo`'s options reach scripts/demo.py, and the native stack scrapes what it runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts import demo
from stack.local import LocalStack

REPO = Path(__file__).resolve().parents[2]


def _demo_command(*assignments: str) -> str:
    """The command `make demo` would run (make -n: nothing is run)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_WORKERS", "COLLECTORS")}
    result = subprocess.run(
        ["make", "-n", "demo", *assignments],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    command = result.stdout.replace("\\\n", " ")
    [line] = [line for line in command.splitlines() if "scripts.demo" in line]
    return " ".join(line.split())


def test_make_demo_starts_gateway_workers_only_when_asked() -> None:
    assert _demo_command().endswith("-m scripts.demo")
    assert _demo_command("GATEWAY_WORKERS=2").endswith("-m scripts.demo --gateway-workers 2")
    both = _demo_command("COLLECTORS=3", "GATEWAY_WORKERS=2")
    assert both.endswith("--collectors 3 --gateway-workers 2")


@pytest.mark.parametrize("workers", ["0", "65"])
def test_the_demo_refuses_a_number_of_workers_the_gateway_would_refuse(workers: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--gateway-workers", workers])
    assert exit_info.value.code == 2


def test_prometheus_scrapes_every_worker_of_every_replica(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, tmp_path / "tenants.json", gateway_replicas=2, gateway_workers=3)
    first, second = stack.gateway_ports
    assert len({first.grpc, first.http, second.grpc, second.http}) == 4
    assert stack.gateway_metrics_addresses == [
        f"127.0.0.1:{ports.metrics + worker}" for ports in (first, second) for worker in range(3)
    ]
    # Replica 0 is the stack's own gateway ports (what `make demo` prints).
    assert stack.gateway_grpc_endpoint == first.grpc_endpoint
    assert stack.gateway_http_url == first.http_url
