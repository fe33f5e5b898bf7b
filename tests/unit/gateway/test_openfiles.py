"""The gateway raises its open-files limit at start and says when it is nearly used."""

from __future__ import annotations

import contextlib
import logging
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_fixtures import run
from gateway_http_fixtures import http_gateway

from gateway import openfiles


@contextlib.contextmanager
def soft_limit(soft: int) -> Iterator[int]:
    """This process with soft open-files limit `soft` for a while; yields the hard one."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (before, hard))


def test_the_soft_limit_is_raised_to_the_hard_one_and_the_room_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with soft_limit(1024) as hard, caplog.at_level(logging.INFO, "gateway.openfiles"):
        limit = openfiles.raise_soft_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    assert (limit.before, limit.soft) == (1024, hard)
    assert limit.agents == hard - openfiles.RESERVED
    assert f"limit {hard}, raised from 1024 (hard {hard})" in caplog.text


def test_readyz_says_no_room_near_the_limit_and_ready_again_below(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            opened = openfiles.open_count()
            assert opened is not None
            with soft_limit(opened + 2):
                near = await http.client.get("/readyz")
            assert near.status_code == 503
            assert "open files in use: no room for more agents" in near.json()["reason"]
            assert (await http.client.get("/readyz")).status_code == 200

    run(scenario())


def test_metrics_show_the_process_open_files_and_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            text = (await http.client.get("/metrics")).text
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            assert f"process_max_fds {float(limit)}" in text
            assert "process_open_fds " in text
            assert "process_resident_memory_bytes " in text

    run(scenario())
