"""Fixtures of the gateway's unit tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def no_gateway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """GatewaySettings read os.environ too: keep the developer's GATEWAY_* (and the
    `otel-gateway agents` command's OTEL_GATEWAY_*) out of every test."""
    for name in list(os.environ):
        if name.startswith(("GATEWAY_", "OTEL_GATEWAY_")):
            monkeypatch.delenv(name)
