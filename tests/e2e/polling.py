"""Waiting in the end-to-end tests: ask again until the answer comes or the time is up."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def poll(
    what: str | Callable[[], str], probe: Callable[[], T], timeout: float, every: float = 0.5
) -> T:
    """probe() every `every` seconds until it returns something truthy, and return that;
    past `timeout` seconds fail the test, saying `what` was awaited and the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            said = what() if callable(what) else what
            pytest.fail(f"after {timeout:.0f} s: {said} (last: {last!r})")
        time.sleep(every)
