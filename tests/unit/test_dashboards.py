"""Grafana's files, checked without Grafana: the dashboards are what the generator
builds, use the provisioned datasource, resolve every variable, and name only
metrics that exist (the contract, or a recording rule of prometheus/rules/).

Whether Prometheus accepts every query is tests/e2e/test_dashboards_live.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from metric_contract import (
    CONTRACT,
    metric_names,
    name_patterns,
    recorded_names,
    unguarded_platform_selectors,
)

from grafana import build_dashboards

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "grafana"
DASHBOARDS_DIR = GRAFANA / "dashboards"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml"
COMPOSE_FILE = REPO / "compose.yaml"

BUILTIN_VARIABLES = {
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__from",
    "__to",
    "__dashboard",
    "__org",
    "__user",
}
# $name, ${name}, ${name:format}, [[name]]; not "$1" (a label_replace group).
VARIABLE_REFERENCE = re.compile(
    r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)\]\]"
)
GRID_WIDTH = 24


def _dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    }


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    """The committed dashboards by file name."""
    found = _dashboards()
    assert found, f"no dashboards in {DASHBOARDS_DIR}"
    return found


def _references(text: str) -> set[str]:
    return {next(g for g in match.groups() if g) for match in VARIABLE_REFERENCE.finditer(text)}


def test_committed_json_is_what_the_generator_builds() -> None:
    built = build_dashboards.render()
    committed = {path.name for path in DASHBOARDS_DIR.glob("*.json")}
    assert committed == set(built), "run `python -m grafana.build_dashboards`"
    for name, text in built.items():
        assert (DASHBOARDS_DIR / name).read_text(encoding="utf-8") == text, (
            f"{name} is stale: run `python -m grafana.build_dashboards` and commit the result"
        )


def test_the_datasource_is_provisioned_with_uid_prometheus() -> None:
    document = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))
    [datasource] = document["datasources"]
    assert datasource["uid"] == build_dashboards.DATASOURCE["uid"] == "prometheus"
    assert datasource["type"] == "prometheus"
    # The compose service's name and port.
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]


def test_grafana_loads_the_dashboards_directory_compose_mounts() -> None:
    providers = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))["providers"]
    paths = {provider["options"]["path"] for provider in providers}
    grafana = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]["grafana"]
    mounts = {
        volume.split(":")[1]
        for volume in grafana["volumes"]
        if volume.startswith("./grafana/dashboards:")
    }
    assert paths == mounts


def test_dashboards_are_unique_and_titled(dashboards: dict[str, dict[str, Any]]) -> None:
    uids = [d["uid"] for d in dashboards.values()]
    titles = [d["title"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    assert len(set(titles)) == len(titles)
    assert {"Agents overview", "Gateway"} <= set(titles)


def test_every_panel_and_query_uses_the_prometheus_datasource(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    for name, document in dashboards.items():
        for panel in build_dashboards.panels(document):
            if panel["type"] == "row":
                continue
            where = f"{name}: {panel['title']}"
            assert panel["datasource"]["uid"] == "prometheus", where
            assert panel["targets"], f"{where} has no query"
            for query in panel["targets"]:
                assert query["datasource"]["uid"] == "prometheus", where
                assert query["expr"].strip(), where
        for variable in document["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == "prometheus", variable["name"]


def test_every_variable_reference_resolves(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, document in dashboards.items():
        defined = {variable["name"] for variable in document["templating"]["list"]}
        texts = [
            json.dumps(panel.get("targets", [])) + panel["title"]
            for panel in build_dashboards.panels(document)
        ]
        texts += [json.dumps(v.get("query", "")) for v in document["templating"]["list"]]
        used = set().union(*map(_references, texts))
        unknown = used - defined - BUILTIN_VARIABLES
        assert not unknown, f"{name} uses undefined variables {unknown}"
        assert defined <= used, f"{name} defines unused variables {defined - used}"


def test_the_tenant_selector_lists_tenant_ids(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, document in dashboards.items():
        tenant = next(v for v in document["templating"]["list"] if v["name"] == "tenant")
        query = tenant["query"]["query"]
        match = re.fullmatch(r"label_values\((\w+)(?:\{[^{}]*\})?, tenant_id\)", query)
        assert match, f"{name}: {query}"
        assert match[1] in CONTRACT, f"{name}: {match[1]} is not a contract metric"
        assert tenant["includeAll"]
        assert tenant["allValue"] == ".*"
        filtered = [
            query["expr"]
            for panel in build_dashboards.panels(document)
            for query in panel.get("targets", [])
            if 'tenant_id=~"$tenant"' in query["expr"]
        ]
        assert filtered, f"{name}: no query filters by the tenant selector"


def test_queries_name_only_contract_metrics_and_recording_rules(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    known = CONTRACT | recorded_names()
    for name, document in dashboards.items():
        for panel in build_dashboards.panels(document):
            for query in panel.get("targets", []):
                expr = query["expr"]
                unknown = metric_names(expr) - known
                assert not unknown, f"{name}: {panel['title']}: {unknown}"
                for pattern in name_patterns(expr):
                    assert any(re.fullmatch(pattern, known_name) for known_name in known), (
                        f"{name}: {panel['title']}: {pattern} matches nothing known"
                    )


def test_panels_fit_the_grid_without_overlapping(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, document in dashboards.items():
        taken: set[tuple[int, int]] = set()
        ids = []
        for panel in build_dashboards.panels(document):
            ids.append(panel["id"])
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= GRID_WIDTH, f"{name}: {panel['title']}"
            cells = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not cells & taken, f"{name}: {panel['title']} overlaps another panel"
            taken |= cells
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"


def test_tables_join_queries_on_the_same_labels(dashboards: dict[str, dict[str, Any]]) -> None:
    # Grafana's merge joins table rows on every label column: a query returning
    # other labels (or a metric name) would make rows that never join.
    for name, document in dashboards.items():
        for panel in build_dashboards.panels(document):
            if panel["type"] != "table":
                continue
            keys = [
                label
                for label, title in panel["transformations"][1]["options"]["renameByName"].items()
                if not label.startswith("Value #")
            ]
            for query in panel["targets"]:
                assert query["format"] == "table", panel["title"]
                assert query["instant"], panel["title"]
                grouping = re.findall(r"\b(?:sum|max|min) by \(([^)]*)\)", query["expr"])
                assert grouping, f"{name}: {panel['title']}: {query['expr']}"
                assert all(
                    {label.strip() for label in group.split(",")} == set(keys) for group in grouping
                ), f"{name}: {panel['title']}: {query['expr']}"


def test_platform_panels_read_only_the_platform_jobs(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    # As the rules (tests/unit/test_rules.py): a tenant's series named gateway_* or up
    # must not show in the panels that judge the pipeline, nor in the tenant list.
    for name, document in dashboards.items():
        exprs = [
            (panel["title"], query["expr"])
            for panel in build_dashboards.panels(document)
            for query in panel.get("targets", [])
        ]
        exprs += [
            (variable["name"], variable["query"]["query"])
            for variable in document["templating"]["list"]
            if isinstance(variable.get("query"), dict)
        ]
        for title, expr in exprs:
            assert not unguarded_platform_selectors(expr), f"{name}: {title}: {expr}"
