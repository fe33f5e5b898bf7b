"""Fixtures of the agents' unit tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_gateway import LiveGateway, live_gateway


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK and its exporters also read os.environ: keep the developer's OTEL_* out."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[LiveGateway]:
    """A gateway running in this process, with a fake Collector behind it."""
    with live_gateway(tmp_path) as running:
        yield running
