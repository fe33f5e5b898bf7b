"""The real stack for end-to-end tests: Collector, Prometheus and gateway as processes.

Binaries that are missing skip these tests on a developer's machine; with
CI=true they fail instead, so CI can never pass without running them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_fixtures import make_tenants
from needs import Binaries, require, stack_binaries

from stack.local import (
    LocalStack,
    StackError,
    alertmanager_binary,
    collector_binary,
    prometheus_binary,
)

TENANTS = ("acme", "globex")


@pytest.fixture(scope="module")
def binaries() -> Binaries:
    """The Collector and Prometheus, for a module's stacks of its own."""
    return stack_binaries()


@pytest.fixture(scope="session")
def tenant_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A tenants file with one key per tenant, and those keys."""
    path = tmp_path_factory.mktemp("gateway") / "tenants.json"
    return path, make_tenants(path, *TENANTS)


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, tenant_keys: tuple[Path, dict[str, str]]
) -> Iterator[LocalStack]:
    """Collector, gateway and Prometheus on free ports, from the repo's config files."""
    try:
        collector = collector_binary()
    except StackError as exc:
        require("the Collector", exc)
    try:
        prometheus = prometheus_binary()
    except StackError as exc:
        require("Prometheus", exc)

    local = LocalStack(tmp_path_factory.mktemp("stack"), tenants_file=tenant_keys[0])
    started = []
    try:
        for process in (
            local.start_collector(collector),
            local.start_gateway(),
            local.start_prometheus(prometheus),
        ):
            started.append(process)
            local.wait_ready(process, timeout=60)
        yield local
    finally:
        local.stop_all()
        # Teardown ended exactly what it started, and all of it.
        assert all(p.popen.poll() is not None for p in started)


@pytest.fixture(scope="module")
def alertmanager(stack: LocalStack) -> Iterator[str]:
    """Alertmanager on the port the stack's Prometheus already sends alerts to."""
    try:
        binary = alertmanager_binary()
    except StackError as exc:
        require("Alertmanager", exc)
    process = stack.start_alertmanager(binary)
    try:
        stack.wait_ready(process, timeout=30)
        yield stack.alertmanager_url
    finally:
        stack.stop(process)
        assert process.popen.poll() is not None
