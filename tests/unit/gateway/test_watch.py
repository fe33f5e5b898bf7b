"""One watcher re-reads the tenants, limits and JWT key files, each when it changes."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import jwt
import pytest
from gateway_fixtures import make_tenants

from gateway import tenants
from gateway.app import Gateway
from gateway.auth import Credentials
from gateway.errors import Unauthenticated
from gateway.settings import GatewaySettings
from gateway.tenants import Tenant
from gateway.watch import FileWatcher, WatchedFile

SECRET = b"s" * 48


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _touch(path: Path, text: str | bytes, mtime: float) -> None:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    os.utime(path, (mtime, mtime))  # a distinct stamp within one clock tick


def _token(secret: bytes, tenant: str) -> str:
    claims = {"tenant_id": tenant, "aud": "otel-gateway", "exp": int(time.time()) + 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


def test_the_gateway_watches_its_three_files_with_one_watcher(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")
    limits_file, secret_file = tmp_path / "limits.yaml", tmp_path / "jwt.secret"
    _touch(limits_file, "defaults:\n  max_active_series: 10\n", 1000)
    _touch(secret_file, SECRET, 1000)
    gateway = Gateway.create(
        GatewaySettings(
            tenants_file=tmp_path / "tenants.json",
            fleet_state_file=tmp_path / "fleet.json",
            limits_file=limits_file,
            jwt_secret_file=secret_file,
            tenants_reload_seconds=1,
            limits_reload_seconds=5,
        )
    )
    watcher = gateway.watcher
    assert [f.path for f in watcher.files] == [tmp_path / "tenants.json", limits_file, secret_file]
    clock = Clock()
    watcher = FileWatcher(clock)
    for file in gateway.watcher.files:
        watcher.watch(file)
    authenticate = gateway.authenticator.authenticate

    # The tenants file: globex's key revoked; the JWT key: replaced; the limits: raised.
    table = tenants.load(tmp_path / "tenants.json")
    tenants.save(tmp_path / "tenants.json", tenants.revoke_keys(table, "globex", None)[0])
    _touch(secret_file, b"n" * 48, 2000)
    _touch(limits_file, "defaults:\n  max_active_series: 20\n", 2000)
    clock.now = 1.5  # the tenants and JWT files are due, the limits file is not
    watcher.poll()
    with pytest.raises(Unauthenticated):
        authenticate(Credentials(f"Bearer {keys['globex']}"))
    assert authenticate(Credentials(f"Bearer {_token(b'n' * 48, 'acme')}")) == Tenant("acme")
    assert gateway.ingestor.limits.for_tenant("acme").max_active_series == 10
    clock.now = 5.5
    watcher.poll()
    assert gateway.ingestor.limits.for_tenant("acme").max_active_series == 20


def test_a_file_that_does_not_load_is_reported_once_and_the_last_value_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "value.txt"
    _touch(path, "1", 1000)

    def load(p: Path) -> int:
        try:
            return int(p.read_text())
        except FileNotFoundError:
            return 0

    file = WatchedFile(path, load, what="the test file", logger=logging.getLogger("t"), initial=int)
    assert file.value == 1
    assert not file.reload()  # unchanged: not even read
    with caplog.at_level(logging.ERROR, logger="t"):
        _touch(path, "not a number", 2000)
        assert not file.reload()
        assert not file.reload()
    assert file.value == 1
    assert caplog.text.count("the test file rejected, keeping the previous one") == 1
    path.unlink()
    assert file.reload()
    assert file.value == 0


def test_without_an_initial_value_a_bad_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        WatchedFile(
            tmp_path / "missing",
            lambda p: int("x"),
            what="a key file",
            logger=logging.getLogger("t"),
        )
