"""Typed reads of OTEL_* variables that fall back, with one warning, on values they cannot use.

Where this sits: agent code ──(otel_agents: settings ← *env*)──▶ OTLP ──▶ gateway.

The OpenTelemetry specification's rules (Environment Variable Specification,
"Configuration types"): an empty value counts as unset; a boolean is true only for
``true`` in any case, and anything but ``true``/``false`` is false with a warning; a
number that cannot be parsed or is out of range is ignored with a warning (the default
applies); an unknown enum value is ignored with a warning. Durations and timeouts are
milliseconds, and a timeout of 0 means no limit.

Each warning names the variable, what was done instead and what to write; none repeats
a value that could be a secret.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TypeVar
from urllib.parse import unquote

T = TypeVar("T", bound=str)

NO_LIMIT_MS = float(2**31 - 1)
"""A timeout of 0 means no limit (specification); it is realised as this "very long time"."""

# Below this many milliseconds a timeout or an interval is surely meant in seconds (the
# Python SDK once read OTEL_EXPORTER_OTLP_TIMEOUT as seconds, and people copy that).
SURELY_SECONDS_BELOW_MS = 100.0

# gRPC refuses other metadata keys, and `-bin` keys need bytes values; one rule for both
# protocols keeps a header set valid when the protocol changes.
_HEADER_KEY = re.compile(r"[0-9a-z_.\-]+")
# gRPC metadata and HTTP header values must be printable ASCII.
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")


class EnvReader:
    """Reads variables from one environment and collects the warnings of what it could not use."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        """Read from `environ` (usually `os.environ`)."""
        self._environ = environ
        self.warnings: list[str] = []
        """One line per unusable value: the variable, the fallback, what to write."""

    def warn(self, message: str) -> None:
        """Record a problem that was handled by falling back."""
        self.warnings.append(message)

    def get(self, *names: str) -> tuple[str, str] | None:
        """The first set variable among `names` (signal-specific first) as (name, value)."""
        for name in names:
            value = self._environ.get(name, "").strip()
            if value and not _utf8(value):
                # Bytes that are not UTF-8 reach Python as lone surrogates, which no
                # protobuf string, header or file name can carry.
                warning = f"{name} is not valid UTF-8 text; ignored: write it in UTF-8"
                if warning not in self.warnings:
                    self.warn(warning)
                continue
            if value:
                return name, value
        return None

    def value(self, *names: str) -> str | None:
        """The value of the first set variable among `names`."""
        found = self.get(*names)
        return found[1] if found else None

    def boolean(self, *names: str, default: bool = False) -> bool:
        """``true``/``false`` in any case; anything else gives `default`, with a warning."""
        found = self.get(*names)
        if found is None:
            return default
        name, raw = found
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        self.warn(
            f"{name}={raw!r} is not a boolean; using {str(default).lower()}: write true or false"
        )
        return default

    def choice(self, *names: str, options: tuple[T, ...], default: T) -> T:
        """One of `options` (case-insensitive); an unknown value gives `default`, with a warning."""
        found = self.get(*names)
        if found is None:
            return default
        name, raw = found
        for option in options:
            if raw.lower() == option:
                return option
        self.warn(
            f"{name}={raw!r} is not one of {', '.join(options)}; using {default}: "
            f"write one of those, or unset {name}"
        )
        return default

    def milliseconds(
        self, *names: str, default_ms: float, zero_is_no_limit: bool, minimum_ms: float = 0.0
    ) -> float:
        """A duration or timeout in milliseconds (specification), with the fallbacks above.

        0 is no limit for a timeout (`zero_is_no_limit`) and unusable for an interval. A value
        under `SURELY_SECONDS_BELOW_MS` is read as seconds, with a warning. The result is
        clamped to [`minimum_ms`, `NO_LIMIT_MS`], with a warning: longer waits overflow
        Python's and gRPC's timers, and a tiny interval would export in a busy loop.
        """
        found = self.get(*names)
        if found is None:
            return default_ms
        name, raw = found
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        default_text = f"using the default {default_ms:g} ({default_ms / 1000:g} s)"
        if not math.isfinite(number) or number < 0 or (number == 0 and not zero_is_no_limit):
            floor = "0 (no limit) or more" if zero_is_no_limit else "more than 0"
            self.warn(
                f"{name}={raw!r} is not a usable number of milliseconds; {default_text}: "
                f"write {floor} milliseconds, e.g. {default_ms:g}"
            )
            return default_ms
        if number == 0:
            return NO_LIMIT_MS
        if number < SURELY_SECONDS_BELOW_MS:
            seconds = number
            number *= 1000
            if minimum_ms <= number:  # else the out-of-range warning below says it all
                self.warn(
                    f"{name}={raw} is read as {seconds:g} seconds, not milliseconds: the "
                    f"OpenTelemetry specification says milliseconds, and {seconds:g} ms is too "
                    f"short to be meant; write {number:g} to say {seconds:g} s"
                )
        return self._clamped(name, raw, number, minimum_ms, NO_LIMIT_MS, "ms")

    def seconds(self, *names: str, default_s: float, maximum_s: float) -> float:
        """A positive number of seconds (this project's own variables), else `default_s`;
        clamped to `maximum_s` with a warning."""
        found = self.get(*names)
        if found is None:
            return default_s
        name, raw = found
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            self.warn(
                f"{name}={raw!r} is not a positive number of seconds; using the default "
                f"{default_s:g}: write e.g. {default_s:g}"
            )
            return default_s
        return self._clamped(name, raw, number, 0.0, maximum_s, "s")

    def _clamped(
        self, name: str, raw: str, number: float, low: float, high: float, unit: str
    ) -> float:
        if low <= number <= high:
            return number
        bound, limit = (low, "at least") if number < low else (high, "at most")
        self.warn(
            f"{name}={raw} is out of range; using {bound:.15g} {unit}: write {limit} "
            f"{bound:.15g} ({unit})"
        )
        return bound

    def headers(self, *names: str) -> tuple[tuple[str, str], ...]:
        """``k1=v1,k2=v2`` with URL-decoded values, keys lower-cased; bad items are skipped."""
        found = self.get(*names)
        if found is None:
            return ()
        name, raw = found
        result: dict[str, str] = {}
        skipped: list[str] = []
        for position, key, value in _items(raw, lower_keys=True):
            if key is None or value is None:
                skipped.append(f"item {position} is not key=value")
            elif not _HEADER_KEY.fullmatch(key) or key.endswith("-bin"):
                skipped.append(f"header {key!r} is not a valid header name")
            elif not _HEADER_VALUE.fullmatch(value):
                skipped.append(f"the value of header {key!r} is not printable ASCII")
            else:
                result[key] = value
        if skipped:
            # Keys and positions only: values may be secrets.
            self.warn(
                f"{name}: {'; '.join(skipped)}: not sent. Write key1=value1,key2=value2 with "
                "names of letters, digits, '-', '_' or '.', and URL-encode special characters "
                "in values (a space is %20)"
            )
        return tuple(result.items())

    def resource_attributes(self, name: str) -> tuple[tuple[str, str], ...]:
        """``k1=v1,k2=v2``; one bad item discards the whole value (Resource SDK specification)."""
        found = self.get(name)
        if found is None:
            return ()
        _, raw = found
        result: dict[str, str] = {}
        for position, key, value in _items(raw, lower_keys=False):
            if key is None or value is None:
                self.warn(
                    f"{name}: item {position} is not key=value, so the whole variable is ignored "
                    "(OpenTelemetry specification); write key1=value1,key2=value2 and URL-encode "
                    "commas and other special characters in values"
                )
                return ()
            result[key] = value
        return tuple(result.items())


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _items(raw: str, *, lower_keys: bool) -> list[tuple[int, str | None, str | None]]:
    """(position, key, value) of each non-empty item; key and value None when malformed."""
    items: list[tuple[int, str | None, str | None]] = []
    for position, item in enumerate(raw.split(","), start=1):
        if not item.strip():
            continue  # tolerate a trailing or doubled comma
        key, sep, encoded = item.partition("=")
        key = key.strip().lower() if lower_keys else key.strip()
        if not sep or not key:
            items.append((position, None, None))
        else:
            items.append((position, key, unquote(encoded.strip())))
    return items
