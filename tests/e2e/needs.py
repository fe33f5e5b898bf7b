"""What an end-to-end test does when a binary it needs is missing, and the binaries."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from stack.local import StackError, collector_binary, prometheus_binary


def require(what: str, error: Exception) -> None:
    """Skip on a developer's machine; fail with CI=true, so CI never passes without it."""
    message = f"{what} unavailable: {error} (run `make setup`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Binaries:
    """The Collector and Prometheus, for tests that start stacks of their own."""

    collector: Path
    prometheus: Path


def stack_binaries() -> Binaries:
    """Both binaries; missing, the test is skipped (fails with CI=true)."""
    try:
        return Binaries(collector_binary(), prometheus_binary())
    except StackError as exc:
        require("the stack's binaries", exc)
        raise
