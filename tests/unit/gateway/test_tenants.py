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


@pytest.mark.parametrize(
    "name", ["", "Acme", "a b", "-acme", "acme-", "x" * 64, "é", "charlie\n", "\ncharlie"]
)
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


def test_a_revoked_key_stops_authenticating_but_its_record_stays(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    table, old = tenants.add_key(tenants.TenantTable(), "acme")
    table, new = tenants.add_key(table, "acme")
    old_id = tenants.key_id_of(old)
    assert old_id is not None
    table, revoked = tenants.revoke_keys(table, "acme", [old_id])
    assert revoked == [old_id]
    tenants.save(path, table)

    loaded = tenants.load(path)
    assert loaded.authenticate(old) is None
    assert loaded.authenticate(new) == tenants.Tenant("acme")
    stored = json.loads(path.read_text())["tenants"]["acme"]["keys"]
    assert [("revoked" in record) for record in stored] == [True, False]
    assert tenants.active_key_ids(loaded, "acme") == [tenants.key_id_of(new)]

    # Revoking again changes nothing; unknown tenants and keys are named.
    assert tenants.revoke_keys(loaded, "acme", [old_id])[1] == []
    with pytest.raises(ValueError, match="no key nope"):
        tenants.revoke_keys(loaded, "acme", ["nope"])
    with pytest.raises(ValueError, match="no tenant 'globex'"):
        tenants.revoke_keys(loaded, "globex", None)


def test_a_tenant_without_keys_is_known_and_removing_it_forgets_it() -> None:
    table = tenants.add_tenant(tenants.TenantTable(), "jwt-only")
    assert table.knows("jwt-only")
    assert table.tenants["jwt-only"] == ()
    table, key = tenants.add_key(table, "jwt-only")
    assert tenants.add_tenant(table, "jwt-only").authenticate(key) == tenants.Tenant("jwt-only")
    table = tenants.remove_tenant(table, "jwt-only")
    assert not table.knows("jwt-only")
    assert table.authenticate(key) is None
    with pytest.raises(ValueError, match="no tenant"):
        tenants.remove_tenant(table, "jwt-only")


def test_the_registry_sees_a_rewrite_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    table, key = tenants.add_key(tenants.TenantTable(), "acme")
    tenants.save(path, table)
    registry = tenants.TenantRegistry(path)
    before = path.stat()
    # Same length, same mtime, different content: only the inode tells.
    document = json.loads(path.read_text())
    document["tenants"]["acme"]["keys"][0]["created"] = "X" * len(
        document["tenants"]["acme"]["keys"][0]["created"]
    )
    document["tenants"]["acme"]["keys"][0]["sha256"] = "0" * 64
    tmp = tmp_path / "next.json"
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp, path)
    assert path.stat().st_size == before.st_size
    assert registry.reload()
    assert registry.authenticate(key) is None


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_rotate_then_revoke_replaces_a_key_without_a_gap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "tenants.json")
    _, old, _ = _cli(capsys, "tenants", "add", "acme", "--file", path)
    old, old_id = old.strip(), tenants.key_id_of(old.strip())

    code, new, err = _cli(capsys, "tenants", "rotate", "acme", "--file", path)
    new = new.strip()
    assert code == 0
    assert f"otel-gateway tenants revoke acme {old_id}" in err
    both = tenants.load(Path(path))
    assert both.authenticate(old) == both.authenticate(new) == tenants.Tenant("acme")

    code, out, err = _cli(capsys, "tenants", "revoke", "acme", str(old_id), "--file", path)
    assert (code, out) == (0, "")
    assert f"revoked key(s) {old_id}" in err
    after = tenants.load(Path(path))
    assert after.authenticate(old) is None
    assert after.authenticate(new) == tenants.Tenant("acme")

    code, listing, _ = _cli(capsys, "tenants", "list", "--file", path)
    assert f"{old_id} (created " in listing
    assert ", revoked " in listing
    assert old not in listing
    assert new not in listing

    code, _, err = _cli(capsys, "tenants", "revoke", "acme", str(old_id), "--file", path)
    assert code == 0
    assert "already revoked" in err


def test_cli_rotate_revoke_old_and_revoke_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "tenants.json")
    _, first, _ = _cli(capsys, "tenants", "add", "acme", "--file", path)
    code, second, err = _cli(capsys, "tenants", "rotate", "acme", "--revoke-old", "--file", path)
    assert code == 0
    assert "revoked its previous key(s)" in err
    table = tenants.load(Path(path))
    assert table.authenticate(first.strip()) is None
    assert table.authenticate(second.strip()) == tenants.Tenant("acme")

    assert _cli(capsys, "tenants", "revoke", "acme", "--all", "--file", path)[0] == 0
    assert tenants.load(Path(path)).authenticate(second.strip()) is None

    code, _, err = _cli(capsys, "tenants", "rotate", "nobody", "--file", path)
    assert code == 1
    assert "no tenant 'nobody'" in err
    code, _, err = _cli(capsys, "tenants", "revoke", "acme", "ffffffff", "--file", path)
    assert code == 1
    assert "has no key ffffffff" in err


def test_cli_add_without_a_key_and_remove(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "tenants.json")
    code, out, err = _cli(capsys, "tenants", "add", "jwt-only", "--no-key", "--file", path)
    assert (code, out) == (0, "")
    assert "without a key" in err
    assert _cli(capsys, "tenants", "list", "--file", path)[1] == "jwt-only: no keys\n"
    assert _cli(capsys, "tenants", "remove", "jwt-only", "--file", path)[0] == 0
    assert not tenants.load(Path(path)).knows("jwt-only")
