"""The Grafana dashboards' queries as Grafana sends them to Prometheus.

Shared by the end-to-end tests that run the dashboards against a live stack:
the panels of each dashboard, each query's expression with the dashboard
variables substituted, and the query run instant or over the range as the
panel asks.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

from stack.local import LocalStack, http_get

DASHBOARDS_DIR = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
RANGE_SECONDS = 3600
# What Grafana puts in for its built-in variables on a 1-hour range with a
# 10 s scrape interval (the datasource's timeInterval), and for a multi-value
# tenant selection.
SUBSTITUTIONS = {
    "$__rate_interval": "40s",
    "$__interval": "20s",
    "$__range": f"{RANGE_SECONDS}s",
    "$__range_s": str(RANGE_SECONDS),
    "$tenant": "(acme|globex)",
}


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard of grafana/dashboards/, by file name without `.json`."""
    return {
        path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    }


def panels_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's panels, those inside rows included."""
    found = []
    for panel in document["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def substitute(expr: str) -> str:
    """`expr` as Grafana sends it (longest variable names first: $__range_s before $__range)."""
    for variable in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(variable, SUBSTITUTIONS[variable])
    return expr


def prometheus_api(stack: LocalStack, path: str, **params: str) -> Any:
    """The `data` of a successful Prometheus API answer; fails on errors and warnings."""
    url = f"{stack.prometheus_url}{path}?" + urllib.parse.urlencode(params)
    status, body = http_get(url, timeout=10)
    assert status == 200, f"Prometheus answered {status}: {body[:500]!r}"
    document = json.loads(body)
    assert document["status"] == "success", document
    assert not document.get("warnings"), document["warnings"]
    return document["data"]


def run_panel_query(stack: LocalStack, query: dict[str, Any]) -> list[dict[str, Any]]:
    """The panel query's result, run as Grafana runs it (instant or over the range)."""
    expr = substitute(query["expr"])
    now = time.time()
    if query["instant"]:
        data = prometheus_api(stack, "/api/v1/query", query=expr, time=f"{now:.3f}")
    else:
        data = prometheus_api(
            stack,
            "/api/v1/query_range",
            query=expr,
            start=f"{now - RANGE_SECONDS:.3f}",
            end=f"{now:.3f}",
            step="20",
        )
    result: list[dict[str, Any]] = data["result"]
    return result
