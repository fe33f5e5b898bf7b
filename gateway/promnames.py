"""Prometheus names of OpenTelemetry metrics, as the Collector's exporter makes them.

The exporter, Prometheus 3's OTLP receiver and Mimir share one translator
(prometheus/otlptranslator); the Collector is configured with its
`UnderscoreEscapingWithSuffixes` strategy (otel-collector/config.yaml). The
tests hold `prometheus_name` to outputs of the translator itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

# The translator's units (prometheus/otlptranslator metric_namer.go, v1.0.0).
_UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week"}
_PER_UNITS |= {"mo": "month", "y": "year"}
_SEPARATORS = re.compile(r"[^A-Za-z0-9:]+")
_UNDERSCORES = re.compile(r"_+")


@dataclass(frozen=True, slots=True)
class Naming:
    """What the Collector makes of one metric."""

    prometheus: str
    """The Prometheus name ("" when the translator fails)."""
    base: str
    """The name's tokens without unit or type suffixes."""
    type: str
    """counter, gauge, histogram, summary or untyped."""


def tokens(name: str) -> list[str]:
    """The name's runs of `A-Z a-z 0-9 :` (everything else separates them)."""
    return [token for token in _SEPARATORS.split(name) if token]


def _clean_unit(unit: str) -> str:
    return _UNDERSCORES.sub("_", _SEPARATORS.sub("_", unit)).removeprefix("_")


def _unit_suffixes(unit: str) -> tuple[str, str]:
    parts = unit.split("/", 1)
    main = parts[0].strip()
    main_suffix = _UNITS.get(main, main) if main and not {"{", "}"} & set(main) else ""
    per_suffix = ""
    if len(parts) > 1 and parts[1]:
        per = parts[1].strip()
        if per and not {"{", "}"} & set(per):
            per_suffix = _PER_UNITS.get(per, per)
        if per_suffix:
            per_suffix = "per_" + per_suffix
    return main_suffix, per_suffix


def prometheus_name(name: str, unit: str, translator_type: str) -> str:
    """The Collector's name for an OTel metric: translation `UnderscoreEscapingWithSuffixes`
    (otlptranslator normalizeName); `translator_type` is gauge, counter (monotonic sum),
    sum (non-monotonic), histogram or summary. "" when the translator refuses it."""
    parts = tokens(name)
    main, per = _unit_suffixes(unit)
    main, per = _clean_unit(main), _clean_unit(per)
    if main in parts:
        main = ""
    if per == "per_":
        per = ""
    else:
        per = per.removesuffix("_")
        if per in parts:
            per = ""
    if per:
        main = main.removesuffix("_")
    parts += [suffix for suffix in (main, per) if suffix]
    if translator_type == "counter":
        parts = [t for t in parts if t != "total"] + ["total"]
    if unit == "1" and translator_type == "gauge":
        parts = [t for t in parts if t != "ratio"] + ["ratio"]
    result = "_".join(parts)
    if result and result[0].isascii() and result[0].isdigit():
        result = "_" + result
    if result != name and result.strip("_") == "":
        return ""
    return result


def naming(metric: Metric, kind: str, data: Any) -> Naming:
    """What the Collector makes of `metric`, a metric of `kind` with `data`."""
    if kind == "sum":
        translator_type = "counter" if data.is_monotonic else "sum"
        prom_type = "counter" if data.is_monotonic else "gauge"
    elif kind == "exponential_histogram":
        translator_type = prom_type = "histogram"
    else:
        translator_type = prom_type = kind
        if kind == "gauge" and untyped(metric):
            prom_type = "untyped"
    return Naming(
        prometheus_name(metric.name, metric.unit, translator_type),
        "_".join(tokens(metric.name)),
        prom_type,
    )


def untyped(metric: Metric) -> bool:
    """A gauge the exporter turns into an untyped metric, another family type."""
    return any(
        kv.key == "prometheus.type" and kv.value.string_value == "unknown" for kv in metric.metadata
    )
