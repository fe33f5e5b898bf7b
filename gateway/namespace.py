"""One metric namespace shared by every tenant, guarded: the `metric_*` point reasons.

All tenants' series meet in one Collector, whose Prometheus exporter keeps the
first type it sees for a Prometheus name and drops later points of another type
(and a histogram `x` hides any `x_count`, `x_sum`, `x_bucket`). So a tenant could
make another's series vanish by sending the name first. The gateway therefore
decides, per metric, on the name the Collector will make of it:

- the platform's own names (`*last_seen*`, `gateway_*`, `up`, `target_info`,
  `scrape_*`, `otelcol_*`, `prometheus_*`, `ALERTS`, recording rules' names with
  `:`, anything with `__`) are never taken from tenants (`metric_name_reserved`),
  whatever the case, separators or unit suffix (`Connector-Last_Seen` too);
- the names of the metric contract and the library's other instruments
  (otel_agents.names) keep their kind and unit (`metric_type_conflict`);
- any other name keeps the type and unit it was first seen with, across tenants,
  while it is in use (`metric_type_conflict`).

The last one is a table in this process's memory, bounded: a name unused for
`idle_seconds` (longer than the Collector's `metric_expiration`) is forgotten,
and past `max_names` the least recently used goes first. Each tenant may bring
at most its `max_metric_names` names into the table (`metric_name_limit`), so
that one tenant cannot push the others' names out. It starts empty when the
gateway starts, and each gateway process has its own.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from gateway.labels import Problem, shown
from gateway.promnames import Naming, naming, tokens, untyped
from otel_agents.names import CONTRACT, OTHER_INSTRUMENTS, ContractMetric

RESERVED_PREFIXES = ("gateway_", "otelcol_", "prometheus_", "scrape_")
RESERVED_NAMES = frozenset({"up", "target_info", "alerts", "alerts_for_state"})
RESERVED_PARTS = ("last_seen", "__", ":")
MAX_UNIT_CHARS = 63
"""Longer units are refused: a unit becomes part of the Prometheus name."""


def reserved(name: str, found: Naming) -> bool:
    """True for a name only the platform may send (compared without case)."""
    for form in (name.lower(), found.base.lower(), found.prometheus.lower()):
        if form in RESERVED_NAMES or form.startswith(RESERVED_PREFIXES):
            return True
        if any(part in form for part in RESERVED_PARTS):
            return True
    return False


def _contract_index() -> dict[str, ContractMetric]:
    index: dict[str, ContractMetric] = {}
    for row in CONTRACT + OTHER_INSTRUMENTS:
        index["_".join(tokens(row.name)).lower()] = row
        index[row.prometheus.lower()] = row
        if row.kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                index[row.prometheus.lower() + suffix] = row
    return index


_CONTRACT = _contract_index()
_KINDS: dict[str, tuple[str, ...]] = {
    "counter": ("sum",),
    "gauge": ("gauge",),
    "histogram": ("histogram", "exponential_histogram"),
}


def _contract_problem(row: ContractMetric, metric: Metric, kind: str, data: Any) -> str | None:
    if kind not in _KINDS[row.kind]:
        return f"is a {row.kind} of otel_agents' metrics, sent as a {_described(kind, data)}"
    if row.kind == "counter" and not data.is_monotonic:
        return f"is a {row.kind} of otel_agents' metrics, sent as a non-monotonic sum"
    if metric.unit != row.unit:
        return f"has unit {row.unit!r} in otel_agents' metrics, sent with {metric.unit!r}"
    return None


def _described(kind: str, data: Any) -> str:
    if kind == "sum":
        return "monotonic sum" if data.is_monotonic else "non-monotonic sum"
    return kind.replace("_", " ")


def _fixed(metric: Metric, kind: str, data: Any) -> tuple[Naming | None, Problem | None]:
    """What holds for `metric` whatever else is in use: its Naming when it is a
    tenant's own name to note, else (None, its problem or None for a contract name)."""
    name, unit = metric.name, metric.unit
    if len(unit) > MAX_UNIT_CHARS:
        return None, (
            "metric_name_not_allowed",
            f"metric {shown(name)}: its unit is over {MAX_UNIT_CHARS} characters "
            "(a unit becomes part of the Prometheus name)",
        )
    found = naming(metric, kind, data)
    if not found.prometheus:
        return None, (
            "metric_name_not_allowed",
            f"metric {shown(name)} makes no Prometheus name (it needs a letter or digit of "
            "A-Z a-z 0-9): rename it",
        )
    if reserved(name, found):
        return None, (
            "metric_name_reserved",
            f"metric {shown(name)} ({found.prometheus}) is a name of the platform's own: "
            "use another name",
        )
    row = _CONTRACT.get(found.base.lower()) or _CONTRACT.get(found.prometheus.lower())
    if row is None:
        return found, None
    problem = _contract_problem(row, metric, kind, data)
    if problem is None:
        return None, None
    return None, (
        "metric_type_conflict",
        f"metric {shown(name)} {problem} ({row.prometheus}): send {row.name} as a "
        f"{row.kind} with unit {row.unit!r}, or use another name",
    )


@dataclass(slots=True)
class _Entry:
    type: str
    unit: str
    name: str
    """The OpenTelemetry name it was first seen as (for the message)."""
    seen: float
    owner: str
    """The tenant that brought it into use: it counts against that tenant's names."""


class MetricNamespace:
    """The checks above, and the table of names in use: one per gateway process."""

    def __init__(self, max_names: int = 50_000, idle_seconds: float = 600.0) -> None:
        # Longer than the Collector's metric_expiration: a name forgotten here is gone there.
        self.max_names, self.idle_seconds = max_names, idle_seconds
        self._names: OrderedDict[str, _Entry] = OrderedDict()
        self._fixed: dict[tuple[str, str, str, bool, bool], tuple[Naming | None, Problem | None]]
        self._fixed = {}
        self._owned: dict[str, int] = {}
        """Names in the table per tenant that brought them into use."""

    def __len__(self) -> int:
        return len(self._names)

    def owned(self, tenant_id: str) -> int:
        """Names `tenant_id` brought into use that the table still holds."""
        return self._owned.get(tenant_id, 0)

    def check(
        self,
        metric: Metric,
        kind: str,
        data: Any,
        now: float,
        tenant_id: str = "",
        tenant_max_names: int = 0,
    ) -> Problem | None:
        """Why `metric`'s points may not be sent, or None (and the name is noted as in
        use). A name new to the table counts against `tenant_id`'s `tenant_max_names`
        (0: no limit), so that no tenant can fill the table and push others' names out."""
        monotonic = kind == "sum" and data.is_monotonic
        key = (metric.name, metric.unit, kind, monotonic, kind == "gauge" and untyped(metric))
        # What a name is does not change: worked out once (~8 µs), then looked up.
        known = self._fixed.get(key)
        if known is None:
            if len(self._fixed) >= self.max_names:
                self._fixed.clear()
            known = self._fixed[key] = _fixed(metric, kind, data)
        found, problem = known
        if found is None:
            return problem
        return self._note(metric.name, metric.unit, found, now, tenant_id, tenant_max_names)

    def _note(
        self, name: str, unit: str, found: Naming, now: float, tenant_id: str, max_names: int
    ) -> Problem | None:
        names = self._names
        entry = names.get(found.prometheus)
        if entry is not None and now - entry.seen > self.idle_seconds:
            self._drop(found.prometheus)
            entry = None
        if entry is not None:
            if entry.type != found.type or entry.unit != unit:
                return (
                    "metric_type_conflict",
                    f"metric {shown(name)} ({found.type}, unit {unit!r}) becomes "
                    f"{found.prometheus}, in use as a {entry.type} with unit {entry.unit!r} "
                    f"(sent as {shown(entry.name)}): use another name",
                )
            entry.seen = now
            names.move_to_end(found.prometheus)
            return None
        clash = self._suffix_clash(found, now)
        if clash is not None:
            return (
                "metric_type_conflict",
                f"metric {shown(name)} ({found.type}) becomes {found.prometheus}, "
                f"which clashes with the {clash}: use another name",
            )
        if max_names and self.owned(tenant_id) >= max_names:
            self._forget(now)  # its idle names first
            if self.owned(tenant_id) >= max_names:
                return (
                    "metric_name_limit",
                    f"metric {shown(name)}: tenant {tenant_id!r} has {max_names} metric names "
                    f"in use (limit max_metric_names={max_names}); a name unused for "
                    f"{self.idle_seconds:g} s is forgotten",
                )
        names[found.prometheus] = _Entry(found.type, unit, name, now, tenant_id)
        self._owned[tenant_id] = self.owned(tenant_id) + 1
        self._forget(now)
        return None

    def _suffix_clash(self, found: Naming, now: float) -> str | None:
        """A histogram `x` is exposed as x_bucket, x_sum, x_count (a summary: x_sum,
        x_count): the Prometheus client refuses other families of those names."""
        name = found.prometheus
        if found.type in ("histogram", "summary"):
            suffixes = ("_count", "_sum") + (("_bucket",) if found.type == "histogram" else ())
            for suffix in suffixes:
                other = self._live(name + suffix, now)
                if other is not None:
                    return f"{other.type} {name + suffix}"
        for suffix in ("_count", "_sum", "_bucket"):
            if name.endswith(suffix):
                stem = name.removesuffix(suffix)
                entry = self._live(stem, now)
                # A summary has no _bucket series.
                if (
                    entry is not None
                    and entry.type in ("histogram", "summary")
                    and (suffix != "_bucket" or entry.type == "histogram")
                ):
                    return f"{entry.type} {stem}"
        return None

    def _live(self, name: str, now: float) -> _Entry | None:
        entry = self._names.get(name)
        return entry if entry is not None and now - entry.seen <= self.idle_seconds else None

    def _forget(self, now: float) -> None:
        """Drop idle names from the oldest end, then the oldest past `max_names`."""
        names = self._names
        while names:
            oldest = next(iter(names.values()))
            if now - oldest.seen <= self.idle_seconds and len(names) <= self.max_names:
                break
            self._drop(next(iter(names)))

    def _drop(self, prometheus: str) -> None:
        entry = self._names.pop(prometheus)
        left = self._owned[entry.owner] - 1
        if left:
            self._owned[entry.owner] = left
        else:
            del self._owned[entry.owner]
