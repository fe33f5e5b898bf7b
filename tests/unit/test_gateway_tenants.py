"""The tenants file, key look-up, live reload and the `otel-gateway tenants` command."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from gateway import cli, tenants


def test_keys_are_stored_only_as_hashes_and_authenticate_their_tenant(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    table, key_a = tenants.add_key(tenants.TenantTable(), "acme")
    table, key_a2 = tenants.add_key(table, "acme")
    table, key_b = tenants.add_key(table, "globex")
    tenants.save(path, table)

    text = path.read_text()
    for key in (key_a, key_a2, key_b):
        assert key not in text
        assert key.split("_", 2)[2] not in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    loaded = tenants.load(path)
    assert loaded.authenticate(key_a) == tenants.Tenant("acme")
    assert loaded.authenticate(key_a2) == tenants.Tenant("acme")
    assert loaded.authenticate(key_b) == tenants.Tenant("globex")
    forged = key_a[:-1] + ("A" if key_a[-1] != "A" else "B")
    assert loaded.authenticate(forged) is None
    assert loaded.authenticate("") is None
    assert loaded.authenticate("oga__") is None


@pytest.mark.parametrize("name", ["", "Acme", "a b", "-acme", "acme-", "x" * 64, "é"])
def test_tenant_names_must_be_label_safe(name: str) -> None:
    with pytest.raises(ValueError, match="invalid tenant name"):
        tenants.add_key(tenants.TenantTable(), name)


def test_the_registry_reloads_a_changed_file_and_keeps_the_previous_on_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tenants.json"
    table, key_a = tenants.add_key(tenants.TenantTable(), "acme")
    tenants.save(path, table)
    registry = tenants.TenantRegistry(path)
    assert registry.authenticate(key_a) == tenants.Tenant("acme")

    table, key_b = tenants.add_key(table, "globex")
    tenants.save(path, table)
    os.utime(path, (1, 1))  # a different mtime even within one clock tick
    assert registry.reload()
    assert registry.authenticate(key_b) == tenants.Tenant("globex")

    path.write_text("{ not json")
    with caplog.at_level(logging.ERROR, logger="gateway.tenants"):
        assert not registry.reload()
    assert "keeping the previous one" in caplog.text
    assert registry.authenticate(key_b) == tenants.Tenant("globex")
    assert not registry.reload()  # unchanged broken file: no second log line
    assert caplog.text.count("keeping the previous one") == 1


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"tenants": {}}, "version"),
        ({"version": 1, "tenants": []}, "tenants"),
        ({"version": 1, "tenants": {"Bad Name": {"keys": []}}}, "invalid tenant name"),
        ({"version": 1, "tenants": {"a": {"keys": [{"key_id": "1"}]}}}, "key_id, sha256"),
        (
            {
                "version": 1,
                "tenants": {
                    "a": {
                        "keys": [
                            {"key_id": "1", "sha256": "0" * 64, "created": ""},
                            {"key_id": "1", "sha256": "1" * 64, "created": ""},
                        ]
                    }
                },
            },
            "appears twice",
        ),
    ],
)
def test_an_invalid_file_names_what_is_wrong(document: object, message: str) -> None:
    with pytest.raises(tenants.TenantsFileError, match=message):
        tenants.parse(document)


def test_cli_add_prints_the_key_once_and_list_never_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "conf" / "tenants.json"
    assert cli.main(["tenants", "add", "acme", "--file", str(path)]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("oga_")
    assert "created tenant 'acme'" in out.err
    assert tenants.load(path).authenticate(key) == tenants.Tenant("acme")

    assert cli.main(["tenants", "add", "acme", "--file", str(path)]) == 0
    assert "added a key" in capsys.readouterr().err
    assert len(json.loads(path.read_text())["tenants"]["acme"]["keys"]) == 2

    assert cli.main(["tenants", "list", "--file", str(path)]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("acme: ")
    assert key not in listing

    assert cli.main(["tenants", "add", "Not Valid", "--file", str(path)]) == 1
    assert "invalid tenant name" in capsys.readouterr().err
