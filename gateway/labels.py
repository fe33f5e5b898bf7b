"""Attribute keys as the Collector's Prometheus exporter makes them into labels.

The exporter's label namer (prometheus/otlptranslator `LabelNamer`, with
`PreserveMultipleUnderscores` as the exporter sets it) replaces every character
but `A-Z a-z 0-9` with `_` (a fullwidth letter too: one `_` per character),
puts `key_` before a leading digit, and refuses a key that is empty or only
underscores. A refused point or scope key drops that series; a refused resource
key drops `target_info` for every tenant at once (the exporter gives up on the
whole set). So the gateway refuses such keys itself, and the labels the exporter
or Prometheus reserve, and two keys of one list that make the same label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from gateway.enrich import claims_tenant
from gateway.limits import TenantLimits

Problem = tuple[str, str]
"""A reason id and the detail shown to the client."""

_NON_LABEL_CHARS = re.compile(r"[^A-Za-z0-9]")
RESERVED_LABELS = frozenset({"job", "instance", "le", "quantile"})
"""Labels the exporter or Prometheus set themselves: an attribute of the same name
would make a duplicate label, and the series would be dropped."""
RESERVED_LABEL_PREFIXES = ("__", "otel_scope_")
# Resource attributes the exporter turns into `job` and `instance` (not labels of
# target_info): left out of the label checks.
IDENTITY_KEYS = frozenset({"service.name", "service.namespace", "service.instance.id"})
_SHOWN_CHARS = 60
REMEMBERED_RESOURCES = 4096
"""Resources remembered per limits; past it the memory starts over."""
REMEMBERED_RESOURCE_BYTES = 2048
"""Larger resources are checked every time rather than remembered."""


def shown(text: str) -> str:
    """A client-supplied string quoted and cut short for a message."""
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...")


def label_name(key: str) -> str:
    """The label the exporter makes of `key`, or "" when it refuses the key."""
    label = _NON_LABEL_CHARS.sub("_", key)
    if "0" <= label[:1] <= "9":
        label = "key_" + label
    return "" if label.strip("_") == "" else label


def key_problem(key: str, max_length: int, resource: bool = False) -> tuple[str, Problem | None]:
    """The label of `key` and what is wrong with it as a label (patterns aside); a
    `resource` key makes a label of `target_info` only, where otel_scope_* is free."""
    if max_length and len(key) > max_length:
        return "", (
            "attribute_key_not_allowed",
            f"attribute key {shown(key)} has {len(key)} characters, "
            f"limit max_attribute_key_length={max_length}",
        )
    label = label_name(key)
    if not label:
        return "", (
            "attribute_key_not_allowed",
            f"attribute key {shown(key)} makes no Prometheus label name (it needs a letter "
            "or digit of A-Z a-z 0-9): rename it",
        )
    prefixes = "__" if resource else RESERVED_LABEL_PREFIXES
    if label in RESERVED_LABELS or label.startswith(prefixes):
        return label, (
            "attribute_key_not_allowed",
            f"attribute key {shown(key)} becomes the reserved label {label!r}: rename it",
        )
    return label, None


def _value_length(kv: KeyValue) -> int:
    value = kv.value
    if value.WhichOneof("value") == "string_value":
        return len(value.string_value)
    # Other values become their string or JSON form: the encoded size is a fair measure.
    return value.ByteSize()


def resource_problem(resource: Resource, limits: TenantLimits) -> Problem | None:
    """Why every point under `resource` is refused, or None. The cheap bounds come
    first, so that a resource of 28,000 attributes costs no walk over them."""
    attributes = resource.attributes
    limit = limits.max_resource_attributes
    if limit and len(attributes) > limit:
        return (
            "resource_limit",
            f"the resource has {len(attributes)} attributes, limit max_resource_attributes="
            f"{limit}: send fewer resource attributes",
        )
    limit = limits.max_resource_bytes
    if limit:
        size = resource.ByteSize()
        if size > limit:
            return (
                "resource_limit",
                f"the resource's attributes take {size} bytes, limit max_resource_bytes="
                f"{limit}: send fewer or shorter resource attributes",
            )
    # An agent sends the same resource every time: what its attributes are is
    # remembered per limits, by its encoding (about 1 µs instead of 20).
    remembered = limits.compiled().resources
    encoded = resource.SerializeToString()
    if encoded in remembered:
        found: Problem | None = remembered[encoded]
        return found
    found = _resource_attributes_problem(attributes, limits)
    if len(encoded) <= REMEMBERED_RESOURCE_BYTES:
        if len(remembered) >= REMEMBERED_RESOURCES:
            remembered.clear()
        remembered[encoded] = found
    return found


def _resource_attributes_problem(
    attributes: Iterable[KeyValue], limits: TenantLimits
) -> Problem | None:
    max_key, max_value = limits.max_attribute_key_length, limits.max_attribute_value_length
    labels: dict[str, str] = {}
    for kv in attributes:
        key = kv.key
        if max_value and _value_length(kv) > max_value:
            return (
                "attribute_value_too_long",
                f"resource attribute {shown(key)} is over max_attribute_value_length={max_value}",
            )
        if key in IDENTITY_KEYS or claims_tenant(key):
            continue  # job and instance; a tenant claim is replaced by the stamp
        label, problem = key_problem(key, max_key, resource=True)
        if problem is not None:
            reason, detail = problem
            return reason, "resource " + detail
        other = labels.setdefault(label, key)
        if other != key:
            return (
                "attribute_key_not_allowed",
                f"resource attribute keys {shown(other)} and {shown(key)} both become label "
                f"{label!r}: keep one",
            )
    return None
