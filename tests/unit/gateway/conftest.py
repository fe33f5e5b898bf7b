"""Fixtures of the gateway's unit tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.redis_server import RedisServer


@pytest.fixture(autouse=True)
def no_gateway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """GatewaySettings read os.environ too: keep the developer's GATEWAY_* (and the
    `otel-gateway agents` command's OTEL_GATEWAY_*) out of every test."""
    for name in list(os.environ):
        if name.startswith(("GATEWAY_", "OTEL_GATEWAY_")):
            monkeypatch.delenv(name)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server (Debian's) of the test's own, stopped after it."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
