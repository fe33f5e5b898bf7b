"""The limits file: defaults, per-tenant overrides, reload, and a broken file kept out."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.app import Gateway
from gateway.limits import Limits, LimitValues, TenantLimits
from gateway.settings import GatewaySettings
from gateway.watch import FileWatcher

BASE = TenantLimits()


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))  # a distinct stamp even within one second


def test_defaults_then_tenant_overrides_apply_in_that_order(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text(
        "defaults:\n  max_active_series: 50\n  max_attributes_per_point: 7\n"
        "tenants:\n  acme:\n    max_active_series: 500\n"
    )
    limits = Limits(BASE, path)
    acme, globex = limits.for_tenant("acme"), limits.for_tenant("globex")
    assert (acme.max_active_series, acme.max_attributes_per_point) == (500, 7)
    assert (globex.max_active_series, globex.max_attributes_per_point) == (50, 7)
    assert globex.rate_limit_burst == BASE.rate_limit_burst


def test_json_is_read_by_its_suffix(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"tenants": {"acme": {"rate_limit_burst": 3}}}))
    assert Limits(BASE, path).for_tenant("acme").rate_limit_burst == 3


def test_a_changed_file_is_reloaded_when_due_and_a_broken_one_keeps_the_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "limits.yaml"
    _write(path, "defaults:\n  max_active_series: 10\n", mtime=1000)
    clock = Clock()
    limits = Limits(BASE, path, reload_seconds=2)
    assert limits.file is not None
    watcher = FileWatcher(clock)
    watcher.watch(limits.file)
    assert limits.for_tenant("acme").max_active_series == 10

    _write(path, "defaults:\n  max_active_series: 20\n", mtime=2000)
    clock.now = 1.0  # not due yet
    watcher.poll()
    assert limits.for_tenant("acme").max_active_series == 10
    clock.now = 2.5
    watcher.poll()
    assert limits.for_tenant("acme").max_active_series == 20

    caplog.set_level(logging.ERROR, logger="gateway.limits")
    for broken in (
        "defaults:\n  max_active_series: lots\n",
        "defaults:\n  max_actve_series: 5\n",  # a typo is an error, not ignored
        "defaults: [1, 2\n",
        "tenants:\n  acme:\n    metric_name_patterns: ['(']\n",
        "tenants:\n  acme:\n    max_request_bytes: 999999999999\n",
        "limits: {}\n",
    ):
        _write(path, broken, mtime=path.stat().st_mtime + 10)
        clock.now += 3
        watcher.poll()
        assert limits.for_tenant("acme").max_active_series == 20
    assert len(caplog.records) == 6
    assert "max_actve_series" in caplog.records[1].getMessage()
    assert "twice GATEWAY_MAX_REQUEST_BYTES" in caplog.records[4].getMessage()


def test_a_missing_file_means_the_settings_defaults(tmp_path: Path) -> None:
    limits = Limits(BASE, tmp_path / "absent.yaml")
    assert limits.for_tenant("acme") == BASE


def test_a_bad_pattern_in_the_settings_stops_the_start() -> None:
    with pytest.raises(ValidationError, match="not a regular expression"):
        GatewaySettings(metric_name_patterns=("(",))


def test_the_settings_are_the_defaults_of_every_limit(tmp_path: Path) -> None:
    settings = GatewaySettings(
        max_active_series=7,
        rate_limit_requests_per_second=0,
        tenants_file=tmp_path / "tenants.json",
        fleet_state_file=tmp_path / "fleet.json",
    )
    limits = Gateway.create(settings).ingestor.limits.for_tenant("anyone")
    assert limits.max_active_series == 7
    assert limits.rate_limit_requests_per_second == 0
    assert limits.metric_name_allowed("connector.bytes_sent")
    assert not limits.attribute_key_allowed("Customer-Name")


def test_each_limit_is_declared_once_and_is_a_setting() -> None:
    """The settings inherit every limit (GATEWAY_<NAME>) from the one declaration."""
    assert issubclass(GatewaySettings, LimitValues)
    assert set(LimitValues.model_fields) == set(TenantLimits.model_fields)
    for name, declared in LimitValues.model_fields.items():
        assert GatewaySettings.model_fields[name].default == declared.default
