"""Each tenant's limits, declared once: defaults from GATEWAY_*, overrides from a file.

`LimitValues` declares every limit, its default and its bounds; the settings
inherit it (so each limit is also the variable GATEWAY_<NAME>), and the limits
file (GATEWAY_LIMITS_FILE, YAML or JSON) overrides it::

    defaults:            # replaces GATEWAY_* defaults for every tenant
      max_active_series: 20000
    tenants:
      acme:              # only what differs for this tenant
        rate_limit_requests_per_second: 100

The file is re-read when it changes (gateway.watch); a file that does not load
is logged and the limits in force stay, so a typo never lifts or tightens every
limit at once.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from gateway.watch import WatchedFile

logger = logging.getLogger(__name__)


def check_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """`patterns` if each is a regular expression; ValueError naming the first that is not."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from exc
    return patterns


class LimitsFileError(ValueError):
    """The limits file cannot be read or is not valid."""


def _any_of(patterns: tuple[str, ...]) -> re.Pattern[str]:
    # One alternation: one fullmatch per name instead of one per pattern.
    return re.compile("|".join(f"(?:{p})" for p in patterns) or "(?!)")


Matcher = Callable[[str], "re.Match[str] | None"]
"""A compiled pattern's `fullmatch`."""


class LimitValues(BaseModel):
    """Every per-tenant limit with its default; 0 turns a numeric limit off.

    The one declaration: `GatewaySettings` inherits these fields (each is the
    variable GATEWAY_<NAME>), and they are the keys of the limits file.
    """

    rate_limit_requests_per_second: float = Field(
        20.0, ge=0, description="Export requests per second per tenant (0 = no limit)."
    )
    rate_limit_burst: int = Field(
        100, ge=1, description="Requests a tenant may send at once above its rate."
    )
    max_request_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="Largest accepted OTLP request (bytes, uncompressed)."
    )
    max_data_points_per_request: int = Field(
        10_000, ge=0, description="Data points in one request; more refuses the request."
    )
    max_gzip_members: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Members of one gzip body (exporters send one); more refuses the request.",
    )
    max_json_request_bytes: int = Field(
        1024 * 1024,
        gt=0,
        description="Largest accepted OTLP/JSON body (bytes, uncompressed): JSON costs "
        "tens of times more than protobuf to decode.",
    )
    work_seconds_per_second: float = Field(
        0.5,
        ge=0,
        description="Event-loop seconds per second a tenant's requests may use to "
        "decompress, decode and check (0 = no limit); over it requests are refused.",
    )
    work_burst_seconds: float = Field(
        1.0, gt=0, description="Event-loop seconds a tenant may use at once above that rate."
    )
    max_active_series: int = Field(
        10_000, ge=0, description="Series per tenant seen within the window; new ones over it drop."
    )
    max_attributes_per_point: int = Field(
        20, ge=0, description="Attributes (labels) per data point, scope attributes included."
    )
    max_attribute_value_length: int = Field(
        256, ge=0, description="Characters in one attribute value."
    )
    max_attribute_key_length: int = Field(
        128, ge=0, description="Characters in one attribute key (point, scope and resource)."
    )
    max_attributes_per_scope: int = Field(
        16, ge=0, description="Attributes of one instrumentation scope; over it, its points drop."
    )
    max_resource_attributes: int = Field(
        64, ge=0, description="Attributes of one resource; over it, all its points drop."
    )
    max_resource_bytes: int = Field(
        8192, ge=0, description="Encoded size of one resource; over it, all its points drop."
    )
    max_metric_names: int = Field(
        2000,
        ge=0,
        description="Metric names a tenant may bring into use across all tenants' namespace "
        "(gateway/namespace.py); new ones over it drop.",
    )
    metric_name_patterns: tuple[str, ...] = Field(
        (r"[a-zA-Z][a-zA-Z0-9_.]{0,254}",),
        description="Regular expressions; a metric name must match one of them whole.",
    )
    attribute_key_patterns: tuple[str, ...] = Field(
        (r"[a-z][a-z0-9_.]{0,62}",),
        description="Regular expressions; an attribute key must match one of them whole.",
    )

    @field_validator("metric_name_patterns", "attribute_key_patterns")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        """Refuse a pattern that is not a regular expression (at start-up, or in the file)."""
        return check_patterns(patterns)

    def limit_values(self) -> dict[str, Any]:
        """The limits alone, by name (for a `TenantLimits` from any `LimitValues`)."""
        return {name: getattr(self, name) for name in LimitValues.model_fields}


@dataclass(frozen=True, slots=True)
class Compiled:
    """What the request path uses of one TenantLimits, as plain attributes: a
    pydantic model's private attribute costs a microsecond per access."""

    metric_name: Matcher
    """Whole match of `metric_name_patterns`."""
    attribute_key: Matcher
    """Whole match of `attribute_key_patterns`."""
    checked: dict[bytes, Any] = field(default_factory=dict)
    """What gateway.validate learned about attribute lists under these limits."""
    resources: dict[bytes, Any] = field(default_factory=dict)
    """What gateway.labels learned about resources under these limits."""


class TenantLimits(LimitValues):
    """The limits in force for one tenant, with its patterns compiled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    _compiled: Compiled = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Compile the patterns once per limits, not once per request."""
        self._compiled = Compiled(
            _any_of(self.metric_name_patterns).fullmatch,
            _any_of(self.attribute_key_patterns).fullmatch,
        )

    @classmethod
    def of(cls, values: LimitValues) -> TenantLimits:
        """The limits `values` (the settings, say) declare."""
        return cls.model_validate(values.limit_values())

    def with_overrides(self, overrides: Mapping[str, Any]) -> TenantLimits:
        """A copy with `overrides` applied and validated (ValidationError names the key)."""
        return TenantLimits.model_validate({**self.limit_values(), **overrides})

    def compiled(self) -> Compiled:
        """The compiled patterns and what was learned under these limits, for the
        request path: they depend on the limits only, so they live as long as they do."""
        # Straight from pydantic's store of private attributes: `self._compiled`
        # would go through BaseModel.__getattr__, which costs as much as the checks.
        private = self.__pydantic_private__
        assert private is not None
        compiled: Compiled = private["_compiled"]
        return compiled

    def metric_name_allowed(self, name: str) -> bool:
        """True when `name` matches one of `metric_name_patterns` whole."""
        return self._compiled.metric_name(name) is not None

    def attribute_key_allowed(self, key: str) -> bool:
        """True when `key` matches one of `attribute_key_patterns` whole."""
        return self._compiled.attribute_key(key) is not None


class LimitsTable:
    """An immutable snapshot: the defaults and each overridden tenant's limits."""

    def __init__(
        self, defaults: TenantLimits, tenants: Mapping[str, TenantLimits] | None = None
    ) -> None:
        self.defaults = defaults
        self.tenants = dict(tenants or {})

    def for_tenant(self, tenant_id: str) -> TenantLimits:
        """The limits of `tenant_id` (the defaults unless the file names it)."""
        return self.tenants.get(tenant_id, self.defaults)


def parse(document: Any, base: TenantLimits, max_request_bytes_cap: int) -> LimitsTable:
    """Validate a decoded limits file on top of `base`; raise LimitsFileError naming the fault."""
    if document is None:  # an empty YAML file
        document = {}
    if not isinstance(document, dict) or set(document) - {"defaults", "tenants"}:
        raise LimitsFileError('expected a mapping with only "defaults" and "tenants"')
    raw_defaults = document.get("defaults") or {}
    raw_tenants = document.get("tenants") or {}
    if not isinstance(raw_defaults, dict) or not isinstance(raw_tenants, dict):
        raise LimitsFileError('"defaults" and "tenants" must be mappings')

    def resolve(where: str, start: TenantLimits, overrides: Any) -> TenantLimits:
        if not isinstance(overrides, dict):
            raise LimitsFileError(f"{where}: expected a mapping of limit name to value")
        try:
            limits = start.with_overrides(overrides)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise LimitsFileError(f"{where}: {problems}") from exc
        if limits.max_request_bytes > max_request_bytes_cap:
            # gRPC refuses anything larger before the gateway sees it.
            raise LimitsFileError(
                f"{where}: max_request_bytes over {max_request_bytes_cap} "
                "(twice GATEWAY_MAX_REQUEST_BYTES, the transport's hard limit)"
            )
        return limits

    defaults = resolve("defaults", base, raw_defaults)
    tenants = {
        str(name): resolve(f"tenants.{name}", defaults, overrides)
        for name, overrides in raw_tenants.items()
    }
    return LimitsTable(defaults, tenants)


def load(path: Path, base: TenantLimits, max_request_bytes_cap: int) -> LimitsTable:
    """Read and validate the limits file (YAML, or JSON by its .json suffix); a
    missing file means `base` for everyone."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        logger.warning("limits file %s does not exist: the GATEWAY_* defaults apply", path)
        return LimitsTable(base)
    except OSError as exc:
        raise LimitsFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = _decode(path, text)
    except Exception as exc:  # JSONDecodeError or yaml.YAMLError: the parser's own message
        raise LimitsFileError(f"{path} does not parse: {exc}") from exc
    table = parse(document, base, max_request_bytes_cap)
    logger.info("loaded limits from %s (%d tenant override(s))", path, len(table.tenants))
    return table


def _decode(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        return json.loads(text)
    import yaml  # only a deployment with a YAML limits file needs PyYAML

    return yaml.safe_load(text)


class Limits:
    """The limits in force for every tenant; the limits file, if any, is a WatchedFile
    (re-read by the gateway's FileWatcher)."""

    def __init__(
        self,
        base: TenantLimits | None = None,
        path: Path | None = None,
        *,
        reload_seconds: float = 2.0,
        series_window_seconds: float = 600.0,
        max_request_bytes_cap: int | None = None,
    ) -> None:
        self.base = base if base is not None else TenantLimits()
        self.series_window_seconds = series_window_seconds
        cap = max_request_bytes_cap or 2 * self.base.max_request_bytes
        self.file: WatchedFile[LimitsTable] | None = None
        self._fixed = LimitsTable(self.base)
        if path is not None:
            self.file = WatchedFile(
                path,
                lambda p: load(p, self.base, cap),
                what=f"limits file {path}",
                logger=logger,
                every=reload_seconds,
                initial=lambda: self._fixed,
            )

    @property
    def table(self) -> LimitsTable:
        """The limits in force now."""
        return self._fixed if self.file is None else self.file.value

    def for_tenant(self, tenant_id: str) -> TenantLimits:
        """The limits of `tenant_id` now."""
        return self.table.for_tenant(tenant_id)

    def reload(self) -> bool:
        """Re-read the file if it changed; True when new limits took effect."""
        return self.file is not None and self.file.reload()
