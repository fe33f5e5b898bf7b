"""Forked children of an agent: counts from zero, an id of their own, a final export.

Real forks (os.fork and a multiprocessing 'fork' child) in an agent process that
exports to a real gateway: the sum over instances must be what was counted, once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from live_gateway import LiveGateway

from otel_agents.identity import machine_key, slot_instance_id

pytestmark = pytest.mark.slow

AGENT = Path(__file__).with_name("fork_agent.py")
REPO = Path(__file__).resolve().parents[3]


def run_agent(gateway: LiveGateway, tmp_path: Path, **extra: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "PYTHONPATH": str(REPO),
        "XDG_RUNTIME_DIR": str(tmp_path),
        "OTEL_EXPORTER_OTLP_ENDPOINT": gateway.grpc_endpoint,
        "OTEL_AGENTS_API_KEY": gateway.keys["acme"],
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # only the final exports
        **extra,
    }
    done = subprocess.run(
        [sys.executable, str(AGENT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def queries_by_instance(gateway: LiveGateway) -> dict[str, list[int]]:
    """Every exported value of connector.queries_processed, by service.instance.id."""
    found: dict[str, list[int]] = {}
    for request in list(gateway.collector.received):
        for resource in request.resource_metrics:
            attributes = {kv.key: kv.value.string_value for kv in resource.resource.attributes}
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "connector.queries_processed":
                        values = [p.as_int for p in metric.sum.data_points]
                        found.setdefault(attributes["service.instance.id"], []).extend(values)
    return found


def test_children_count_from_zero_under_their_own_ids(gateway: LiveGateway, tmp_path: Path) -> None:
    run_agent(gateway, tmp_path)
    found = queries_by_instance(gateway)
    parent = slot_instance_id(machine_key(), "fork-demo", 0)
    # The parent holds slot 0; each child takes the lowest free slot while it runs (the
    # os.fork child has ended, and freed slot 1, when the multiprocessing one starts).
    child = slot_instance_id(machine_key(), "fork-demo", 1)
    assert found == {parent: [1000], child: [99, 7]}
    assert not list(tmp_path.glob("otel-agents-*/*.lock")), "lock files left behind"


def test_an_explicit_instance_id_is_kept_in_children(gateway: LiveGateway, tmp_path: Path) -> None:
    run_agent(gateway, tmp_path, OTEL_RESOURCE_ATTRIBUTES="service.instance.id=worker-7")
    found = queries_by_instance(gateway)
    assert list(found) == ["worker-7"]
    assert sorted(found["worker-7"]) == [7, 99, 1000]
