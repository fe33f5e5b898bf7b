"""What an end-to-end test does when a binary it needs is missing."""

from __future__ import annotations

import os

import pytest


def require(what: str, error: Exception) -> None:
    """Skip on a developer's machine; fail with CI=true, so CI never passes without it."""
    message = f"{what} unavailable: {error} (run `make setup`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
