"""Fixtures the unit and the end-to-end tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stack import prefect_server


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server of this module's own, and this process pointed at it: its
    API URL (stack/prefect_server.py)."""
    with prefect_server.prefect_api(tmp_path_factory.mktemp("prefect")) as url:
        yield url
