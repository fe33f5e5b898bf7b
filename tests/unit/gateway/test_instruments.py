"""The table of the gateway's own metrics is exactly what /metrics shows."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
from gateway_fixtures import counter_request, fake_collector, make_tenants, running_gateway
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway import instruments
from gateway.fleet import Agent

HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def test_every_row_is_on_metrics_with_its_scope_and_nothing_else_is(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> str:
        async with (
            fake_collector() as (_, port),
            running_gateway(
                tmp_path / "tenants.json", port, fleet_state_file=tmp_path / "fleet.json"
            ) as gw,
        ):
            fleet = gw.gateway.fleet
            fleet.see("acme", Agent("connector", "billing", "c-1", "1", "h", False))
            fleet.see("acme", Agent("etl", "nightly", "e-1", "1", "h", False))
            for host in ("h2", "h"):  # two processes as c-1: a clash
                fleet.see("acme", Agent("connector", "billing", "c-1", "1", host, False))
            await gw.export(counter_request().SerializeToString(), keys["acme"])
            with contextlib.suppress(grpc.aio.AioRpcError):  # only to be counted
                await gw.export(b"", "oga_nope_nope")
            return generate_latest(gw.gateway.telemetry.registry).decode()

    text = asyncio.run(scenario())
    families = list(text_string_to_metric_families(text))
    shown: dict[str, set[str]] = {}
    for family in families:
        for sample in family.samples:
            shown.setdefault(sample.name, set()).add(sample.labels.get("otel_scope_name", ""))
    expected: dict[str, str] = {}
    for row in instruments.ALL:
        names = (
            [row.prometheus + suffix for suffix in HISTOGRAM_SERIES]
            if row.kind == "histogram"
            else [row.prometheus]
        )
        expected |= dict.fromkeys(names, row.scope)
    # The process's own (prometheus_client's ProcessCollector) beside the table's rows.
    process = {name for name in shown if name.startswith("process_")}
    assert {"process_open_fds", "process_max_fds", "process_cpu_seconds_total"} <= process
    assert set(shown) - process == set(expected)
    for name, scope in expected.items():
        assert shown[name] == {scope}, name


def test_names_are_unique_and_the_last_seen_families_are_the_fleets() -> None:
    names = [row.name for row in instruments.ALL]
    assert len(names) == len(set(names))
    assert [row.prometheus for pair in instruments.LAST_SEEN.values() for row in pair] == [
        "connector_last_seen_seconds",
        "connector_last_seen_timestamp_seconds",
        "agent_last_seen_seconds",
        "agent_last_seen_timestamp_seconds",
    ]
