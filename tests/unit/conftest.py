"""Fixtures the agents' and the gateway's tests share."""

from __future__ import annotations

import pytest

from stack.pki import Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, the server's certificate and client certificates, in a temporary directory."""
    return Pki.create(tmp_path_factory.mktemp("pki"))
