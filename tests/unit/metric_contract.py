"""The metric names rules and dashboards may use, and a way to find them in PromQL.

The agents' and the gateway's names are the contract of docs/architecture.md; a
typo in a rule or a panel would otherwise return nothing, silently, forever.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from gateway import instruments
from otel_agents import names

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "prometheus" / "rules"

HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def _series(prometheus: str, kind: str) -> list[str]:
    return (
        [prometheus + suffix for suffix in HISTOGRAM_SERIES]
        if kind == "histogram"
        else [prometheus]
    )


CONTRACT = frozenset(
    # the agents' instruments (otel_agents.names) and the gateway's own /metrics
    # (gateway.instruments, the last-seen series of each agent included)
    {name for metric in names.CONTRACT for name in _series(metric.prometheus, metric.kind)}
    | {name for row in instruments.ALL for name in _series(row.prometheus, row.kind)}
    | {row.prometheus for pair in instruments.LAST_SEEN.values() for row in pair}
    | {
        # prometheus_client's process metrics on the gateway's /metrics
        "process_open_fds",
        "process_max_fds",
        # the Collector's telemetry (scrape job collector-telemetry), Collector 0.165.0
        "otelcol_receiver_accepted_metric_points",
        "otelcol_receiver_refused_metric_points",
        "otelcol_receiver_failed_metric_points",
        "otelcol_exporter_sent_metric_points",
        "otelcol_process_memory_rss",
        # Prometheus itself
        "up",
        "ALERTS",
        "prometheus_rule_evaluation_failures_total",
    }
)

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?\b")  # 0.05, 5m
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric and recording-rule names an expression selects (by a simple scan:
    strings, label matchers, ranges, grouping lists and function calls removed)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        following = text[match.end() :].lstrip()
        if word.lower() in _KEYWORDS or following.startswith("("):
            continue
        names.add(word)
    return names


def name_patterns(expr: str) -> list[str]:
    """Regular expressions given as `__name__=~"..."` matchers."""
    return re.findall(r'__name__\s*=~\s*"([^"]*)"', expr)


def rule_groups() -> list[dict[str, Any]]:
    """Every rule group of prometheus/rules/*.yml."""
    groups: list[dict[str, Any]] = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["groups"])
    return groups


def recorded_names() -> set[str]:
    """Names the recording rules define."""
    rules = [rule for group in rule_groups() for rule in group["rules"]]
    return {rule["record"] for rule in rules if "record" in rule}


PLATFORM_JOBS = {
    "up": ('job="gateway"', 'job="collector"'),
    "gateway_": ('job="gateway"',),
    "otelcol_": ('job="collector-telemetry"',),
    "prometheus_": ('job=~"prometheus|thanos"',),
}
"""Name prefix of a platform series → the scrape jobs a selector of it may name."""
_SELECTOR = re.compile(r"\b([A-Za-z_:][A-Za-z0-9_:]*)(\{[^{}]*\})?")


def unguarded_platform_selectors(expr: str) -> list[str]:
    """Selectors of platform series (`up`, gateway_*, otelcol_*, prometheus_*) that do
    not name the platform's own scrape job: a tenant's series of the same name, which
    arrives through the Collector's job with a job of the tenant's choosing, would
    count. `up` also needs `tenant_id=""` (a tenant's series always carry one)."""
    strings = [m.span() for m in _STRING.finditer(expr)]
    found = []
    for match in _SELECTOR.finditer(expr):
        if any(start <= match.start() < end for start, end in strings):
            continue  # a label value such as state=~"up|silent"
        name, matchers = match.group(1), match.group(2) or ""
        if not matchers and expr[match.end() :].lstrip().startswith("("):
            continue  # a function call, not a selector
        for prefix, jobs in PLATFORM_JOBS.items():
            exact = prefix == "up"
            if (name == prefix) if exact else name.startswith(prefix):
                guarded = any(job in matchers for job in jobs)
                if exact:
                    guarded = guarded and 'tenant_id=""' in matchers
                if not guarded:
                    found.append(match.group(0))
    return found
