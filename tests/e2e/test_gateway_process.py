"""The gateway as a process: it starts, serves and stops cleanly on a signal."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from stack.local import LocalStack

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_gateway_drains_and_exits_zero_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    stack = LocalStack(tmp_path, tenants_file=tmp_path / "tenants.json")
    gateway = stack.start_gateway()
    try:
        stack.wait_ready(gateway, timeout=30)
        gateway.popen.send_signal(sig)
        assert gateway.popen.wait(timeout=15) == 0
    finally:
        stack.stop_all()
    log = gateway.log.read_text()
    assert f"received {sig.name}" in log
    assert "gateway stopped" in log
    assert "does not exist" in log  # no tenants file: said once, clearly
