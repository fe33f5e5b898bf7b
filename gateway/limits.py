"""Each tenant's limits: defaults from the settings, overrides from the limits file.

The limits file (GATEWAY_LIMITS_FILE, YAML or JSON) looks like::

    defaults:            # replaces GATEWAY_* defaults for every tenant
      max_active_series: 20000
    tenants:
      acme:              # only what differs for this tenant
        rate_limit_requests_per_second: 100

It is re-read when it changes; a file that does not load is logged and the
limits in force stay, so a typo never lifts or tightens every limit at once.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)


def check_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """`patterns` if each is a regular expression; ValueError naming the first that is not."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from exc
    return patterns


_NEVER_LOADED = object()


class LimitsFileError(ValueError):
    """The limits file cannot be read or is not valid."""


def _any_of(patterns: tuple[str, ...]) -> re.Pattern[str]:
    # One alternation: one fullmatch per name instead of one per pattern.
    return re.compile("|".join(f"(?:{p})" for p in patterns) or "(?!)")


Matcher = Callable[[str], "re.Match[str] | None"]
"""A compiled pattern's `fullmatch`."""


class TenantLimits(BaseModel):
    """The limits of one tenant; 0 turns a numeric limit off (see docs/gateway.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_limit_requests_per_second: float = Field(ge=0)
    rate_limit_burst: int = Field(ge=1)
    max_request_bytes: int = Field(gt=0)
    max_data_points_per_request: int = Field(ge=0)
    max_active_series: int = Field(ge=0)
    max_attributes_per_point: int = Field(ge=0)
    max_attribute_value_length: int = Field(ge=0)
    metric_name_patterns: tuple[str, ...]
    attribute_key_patterns: tuple[str, ...]

    _metric_name: re.Pattern[str] = PrivateAttr()
    _attribute_key: re.Pattern[str] = PrivateAttr()

    @field_validator("metric_name_patterns", "attribute_key_patterns")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        return check_patterns(patterns)

    def model_post_init(self, context: Any, /) -> None:
        """Compile the patterns once per limits, not once per request."""
        self._metric_name = _any_of(self.metric_name_patterns)
        self._attribute_key = _any_of(self.attribute_key_patterns)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> TenantLimits:
        """The GATEWAY_* defaults."""
        return cls.model_validate({name: getattr(settings, name) for name in cls.model_fields})

    def with_overrides(self, overrides: Mapping[str, Any]) -> TenantLimits:
        """A copy with `overrides` applied and validated (ValidationError names the key)."""
        return TenantLimits.model_validate({**self.model_dump(), **overrides})

    def metric_name_allowed(self, name: str) -> bool:
        """True when `name` matches one of `metric_name_patterns` whole."""
        return self._metric_name.fullmatch(name) is not None

    def attribute_key_allowed(self, key: str) -> bool:
        """True when `key` matches one of `attribute_key_patterns` whole."""
        return self._attribute_key.fullmatch(key) is not None

    def matchers(self) -> tuple[Matcher, Matcher]:
        """The whole-match functions of the metric name and attribute key patterns:
        for the request path, which calls them many times (a private attribute of
        a pydantic model costs a microsecond per access)."""
        return self._metric_name.fullmatch, self._attribute_key.fullmatch


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
    """Read and validate the limits file (YAML, or JSON by its .json suffix)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LimitsFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = _decode(path, text)
    except Exception as exc:  # JSONDecodeError or yaml.YAMLError: the parser's own message
        raise LimitsFileError(f"{path} does not parse: {exc}") from exc
    return parse(document, base, max_request_bytes_cap)


def _decode(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        return json.loads(text)
    import yaml  # only a deployment with a YAML limits file needs PyYAML

    return yaml.safe_load(text)


class Limits:
    """The limits in force for every tenant, re-read when the limits file changes.

    The file is checked from the request path at most every `reload_seconds`
    (one stat), so no background task is needed.
    """

    def __init__(
        self,
        base: TenantLimits,
        path: Path | None = None,
        *,
        reload_seconds: float = 2.0,
        series_window_seconds: float = 600.0,
        max_request_bytes_cap: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.series_window_seconds = series_window_seconds
        self._base = base
        self._cap = max_request_bytes_cap or 2 * base.max_request_bytes
        self._reload_seconds = reload_seconds
        self._clock = clock
        self._stamp: object = _NEVER_LOADED
        self._next_check = 0.0
        self.table = LimitsTable(base)
        self.reload()

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Limits:
        """Limits from GATEWAY_* defaults and GATEWAY_LIMITS_FILE."""
        return cls(
            TenantLimits.from_settings(settings),
            settings.limits_file,
            reload_seconds=settings.limits_reload_seconds,
            series_window_seconds=settings.active_series_window_seconds,
            max_request_bytes_cap=2 * settings.max_request_bytes,
        )

    def for_tenant(self, tenant_id: str) -> TenantLimits:
        """The limits of `tenant_id` now (re-reading the file if it is due and changed)."""
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._reload_seconds
            self.reload()
        return self.table.for_tenant(tenant_id)

    def reload(self) -> bool:
        """Re-read the file if it changed; True when new limits took effect."""
        if self.path is None:
            return False
        try:
            stat = self.path.stat()
            stamp: tuple[float, int] | None = (stat.st_mtime, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if stamp is None:
            logger.warning("limits file %s does not exist: the GATEWAY_* defaults apply", self.path)
            self.table = LimitsTable(self._base)
            return True
        try:
            table = load(self.path, self._base, self._cap)
        except LimitsFileError as exc:
            logger.error("limits file rejected, keeping the limits in force: %s", exc)
            return False
        self.table = table
        logger.info("loaded limits from %s (%d tenant override(s))", self.path, len(table.tenants))
        return True


def default_limits(max_request_bytes: int) -> Limits:
    """The GATEWAY_* defaults without reading the environment (for an Ingestor built alone)."""
    from gateway.settings import GatewaySettings

    defaults = GatewaySettings.model_construct(max_request_bytes=max_request_bytes)
    return Limits.from_settings(defaults)
