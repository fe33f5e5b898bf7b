"""Tenants and their API keys: the tenants file, key hashing and look-up.

The file holds only a SHA-256 of each key. Keys are random 256-bit secrets, so
a fast hash is enough (nothing to brute-force); a key names its own id
(`oga_<id>_<secret>`), so a look-up finds one entry and compares one digest in
constant time.

A key is never deleted by revocation: its record stays with a `revoked` time,
so `tenants list` shows what was revoked and when.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.atomicfile import write_atomically
from gateway.watch import WatchedFile

logger = logging.getLogger(__name__)

KEY_PREFIX = "oga"
TENANT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")
"""A tenant name, matched whole (`fullmatch`: `$` would let a trailing newline through)."""
FILE_VERSION = 1


class TenantsFileError(ValueError):
    """The tenants file cannot be read or is not valid."""


@dataclass(frozen=True)
class Tenant:
    """An authenticated tenant: what the rest of the request path is given."""

    id: str


@dataclass(frozen=True)
class KeyRecord:
    """One stored key: its public id, the hash of the whole key, when it was made
    and, once revoked, when that happened."""

    key_id: str
    sha256: str
    created: str
    revoked: str | None = None

    def to_json(self) -> dict[str, str]:
        """The record as stored (no `revoked` field while the key is active)."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class TenantTable:
    """An immutable snapshot of the tenants file."""

    tenants: Mapping[str, tuple[KeyRecord, ...]] = field(default_factory=dict)
    _by_key_id: dict[str, tuple[str, KeyRecord]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {r.key_id: (name, r) for name, records in self.tenants.items() for r in records}
        object.__setattr__(self, "_by_key_id", index)

    def authenticate(self, key: str) -> Tenant | None:
        """The tenant owning `key`, or None for a malformed or unknown key."""
        key_id = key_id_of(key)
        entry = self._by_key_id.get(key_id) if key_id is not None else None
        if entry is None:
            return None
        tenant_id, record = entry
        if not hmac.compare_digest(record.sha256, hash_key(key)) or record.revoked:
            return None
        return Tenant(tenant_id)

    def knows(self, tenant_id: str) -> bool:
        """Whether `tenant_id` is listed, with or without active keys."""
        return tenant_id in self.tenants

    def to_json(self) -> dict[str, Any]:
        """The file's JSON document."""
        return {
            "version": FILE_VERSION,
            "tenants": {
                name: {"keys": [record.to_json() for record in records]}
                for name, records in sorted(self.tenants.items())
            },
        }


def hash_key(key: str) -> str:
    """Hex SHA-256 of a key, the only form in which keys are stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id part of `oga_<id>_<secret>`, or None when the key is not of that form."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


def new_key() -> tuple[str, str]:
    """A fresh key and its id."""
    key_id = secrets.token_hex(4)
    return f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}", key_id


def validate_tenant_name(name: str) -> None:
    """Raise ValueError unless `name` is usable as a tenant id and a label value."""
    if not TENANT_NAME.fullmatch(name):
        raise ValueError(
            f"invalid tenant name {name!r}: use 1-63 characters of a-z, 0-9, '-' and '_', "
            "starting and ending with a letter or digit"
        )


def parse(document: Any) -> TenantTable:
    """Validate a decoded tenants file; raise TenantsFileError naming what is wrong."""
    if not isinstance(document, dict) or document.get("version") != FILE_VERSION:
        raise TenantsFileError(f'expected an object with "version": {FILE_VERSION}')
    raw_tenants = document.get("tenants")
    if not isinstance(raw_tenants, dict):
        raise TenantsFileError('"tenants" must be an object of tenant name to {"keys": [...]}')
    tenants: dict[str, tuple[KeyRecord, ...]] = {}
    seen_ids: set[str] = set()
    for name, entry in raw_tenants.items():
        try:
            validate_tenant_name(name)
        except ValueError as exc:
            raise TenantsFileError(str(exc)) from exc
        keys = entry.get("keys") if isinstance(entry, dict) else None
        if not isinstance(keys, list):
            raise TenantsFileError(f'tenant {name!r}: "keys" must be a list')
        records = []
        for raw in keys:
            try:
                revoked = raw.get("revoked")
                record = KeyRecord(
                    str(raw["key_id"]),
                    str(raw["sha256"]),
                    str(raw["created"]),
                    None if revoked is None else str(revoked),
                )
            except (KeyError, TypeError, AttributeError) as exc:
                raise TenantsFileError(
                    f"tenant {name!r}: each key needs key_id, sha256 and created"
                ) from exc
            if not re.fullmatch(r"[0-9a-f]{64}", record.sha256):
                raise TenantsFileError(f"tenant {name!r}, key {record.key_id}: bad sha256")
            if record.key_id in seen_ids:
                raise TenantsFileError(f"key id {record.key_id} appears twice")
            seen_ids.add(record.key_id)
            records.append(record)
        tenants[name] = tuple(records)
    return TenantTable(tenants)


def load(path: Path) -> TenantTable:
    """Read and validate the tenants file; a missing file is an empty table."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return TenantTable()
    except OSError as exc:
        raise TenantsFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TenantsFileError(f"{path} is not valid JSON: {exc}") from exc
    return parse(document)


def save(path: Path, table: TenantTable) -> None:
    """Write the table atomically, readable by its owner only."""
    write_atomically(path, json.dumps(table.to_json(), indent=2) + "\n", mode=0o600)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def add_tenant(table: TenantTable, tenant_id: str) -> TenantTable:
    """A copy of `table` listing `tenant_id` (unchanged if it is already there)."""
    validate_tenant_name(tenant_id)
    return TenantTable({tenant_id: (), **table.tenants})


def add_key(table: TenantTable, tenant_id: str) -> tuple[TenantTable, str]:
    """A copy of `table` with a new key for `tenant_id` (created if new), and that key."""
    validate_tenant_name(tenant_id)
    key, key_id = new_key()
    while key_id in table._by_key_id:  # 32-bit ids: a clash is rare, not impossible
        key, key_id = new_key()
    record = KeyRecord(key_id, hash_key(key), _now())
    tenants = dict(table.tenants)
    tenants[tenant_id] = (*tenants.get(tenant_id, ()), record)
    return TenantTable(tenants), key


def active_key_ids(table: TenantTable, tenant_id: str) -> list[str]:
    """Ids of the keys of `tenant_id` that are not revoked."""
    return [r.key_id for r in table.tenants.get(tenant_id, ()) if not r.revoked]


def revoke_keys(
    table: TenantTable, tenant_id: str, key_ids: Collection[str] | None
) -> tuple[TenantTable, list[str]]:
    """A copy of `table` with the given keys of `tenant_id` (all when None) revoked,
    and the ids that were newly revoked; ValueError names an unknown tenant or key."""
    records = table.tenants.get(tenant_id)
    if records is None:
        raise ValueError(f"no tenant {tenant_id!r}")
    if key_ids is not None:
        unknown = set(key_ids) - {r.key_id for r in records}
        if unknown:
            raise ValueError(f"tenant {tenant_id!r} has no key {', '.join(sorted(unknown))}")
    now = _now()
    revoked = []
    updated = []
    for record in records:
        if not record.revoked and (key_ids is None or record.key_id in key_ids):
            record = replace(record, revoked=now)
            revoked.append(record.key_id)
        updated.append(record)
    return TenantTable({**table.tenants, tenant_id: tuple(updated)}), revoked


def remove_tenant(table: TenantTable, tenant_id: str) -> TenantTable:
    """A copy of `table` without `tenant_id` and its keys; ValueError if it is not there."""
    if tenant_id not in table.tenants:
        raise ValueError(f"no tenant {tenant_id!r}")
    return TenantTable({k: v for k, v in table.tenants.items() if k != tenant_id})


class TenantRegistry:
    """The tenants in force: the tenants file, re-read when it changes (gateway.watch).

    A file that fails to load is logged and ignored: the previous table stays
    in force, so a typo never locks every tenant out.
    """

    def __init__(self, path: Path, reload_seconds: float = 2.0) -> None:
        self.file = WatchedFile(
            path,
            _load_logged,
            what=f"tenants file {path}",
            logger=logger,
            every=reload_seconds,
            initial=TenantTable,
        )

    @property
    def table(self) -> TenantTable:
        """The table in force."""
        return self.file.value

    def reload(self) -> bool:
        """Re-read the file if it changed; True when a new table took effect."""
        return self.file.reload()

    def authenticate(self, key: str) -> Tenant | None:
        """The tenant owning `key` in the table in force."""
        return self.file.value.authenticate(key)

    def knows(self, tenant_id: str) -> bool:
        """Whether `tenant_id` is listed in the table in force."""
        return self.file.value.knows(tenant_id)


def _load_logged(path: Path) -> TenantTable:
    table = load(path)
    if not path.exists():
        logger.warning(
            "tenants file %s does not exist: every request is refused until "
            "`otel-gateway tenants add NAME --file %s` creates it",
            path,
            path,
        )
    logger.info("loaded %d tenant(s) from %s", len(table.tenants), path)
    return table
