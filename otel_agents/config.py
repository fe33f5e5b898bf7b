"""Agent settings, read once at start-up from the standard OTEL_* environment variables.

Where this sits: agent code ──(otel_agents: *settings*)──▶ OTLP/gRPC ──▶ gateway.

The OTel exporter reads some of these variables itself, with pitfalls (timeouts read as
seconds, a bare ``host:port`` silently meaning TLS, a bad compression value raising in the
host). So everything is parsed and checked here, and the exporter is handed explicit values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import unquote, urlsplit

DEFAULT_ENDPOINT = "http://localhost:4317"

Compression = Literal["gzip", "none"]

# gRPC refuses other metadata keys, and `-bin` keys need bytes values.
_HEADER_KEY = re.compile(r"[0-9a-z_.\-]+")
# gRPC metadata values (and so an API key) must be printable ASCII.
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
_API_KEY = re.compile(r"[\x21-\x7e]+")
# The spec reads OTEL_EXPORTER_OTLP_TIMEOUT in milliseconds; the Python SDK reads seconds.
# A value this small is almost certainly seconds, and would make every export time out.
_MIN_TIMEOUT_MS = 100.0


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the variable and what to change."""


@dataclass(frozen=True)
class AgentConfig:
    """Validated agent settings; build with `AgentConfig.from_env(os.environ)`."""

    endpoint: str = DEFAULT_ENDPOINT
    """Always ``http://host:port`` (plaintext) or ``https://host:port`` (TLS)."""
    insecure: bool = False
    """OTEL_EXPORTER_OTLP_INSECURE; decides plaintext only for a bare ``host:port``."""
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """gRPC metadata from the headers variable, keys lower-cased (repr hidden: may hold keys)."""
    api_key: str | None = field(default=None, repr=False)
    certificate_file: str | None = None
    compression: Compression = "gzip"
    timeout_s: float = 10.0
    export_interval_ms: float = 30_000.0
    shutdown_timeout_s: float = 5.0
    service_name: str | None = None
    resource_attributes: tuple[tuple[str, str], ...] = ()
    sdk_disabled: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AgentConfig:
        """Read and validate every setting; raise `ConfigError` naming the bad variable."""
        env = _Env(environ)
        insecure = env.boolean("OTEL_EXPORTER_OTLP_METRICS_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")
        endpoint = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        api_key = env.get("OTEL_AGENTS_API_KEY")
        return cls(
            endpoint=normalize_endpoint(endpoint[1], endpoint[0], insecure=insecure)
            if endpoint
            else DEFAULT_ENDPOINT,
            insecure=insecure,
            headers=env.pairs(
                "OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS", header=True
            ),
            api_key=check_api_key(api_key[1], api_key[0]) if api_key else None,
            certificate_file=env.value(
                "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"
            ),
            compression=env.compression(
                "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"
            ),
            timeout_s=env.number(
                "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                default=10_000.0,
                minimum=_MIN_TIMEOUT_MS,
                unit="milliseconds, e.g. 10000 for 10 s (OTLP spec, not seconds)",
            )
            / 1000.0,
            export_interval_ms=env.number(
                "OTEL_METRIC_EXPORT_INTERVAL", default=30_000.0, unit="milliseconds, e.g. 30000"
            ),
            shutdown_timeout_s=env.number(
                "OTEL_AGENTS_SHUTDOWN_TIMEOUT", default=5.0, unit="seconds, e.g. 5"
            ),
            service_name=env.value("OTEL_SERVICE_NAME"),
            resource_attributes=env.pairs("OTEL_RESOURCE_ATTRIBUTES", header=False),
            sdk_disabled=env.boolean("OTEL_SDK_DISABLED"),
        )

    @property
    def use_tls(self) -> bool:
        """True when the channel to the gateway is encrypted."""
        return self.endpoint.startswith("https://")

    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        """Headers to send on every export; the API key, if set, is the authorization."""
        if self.api_key is None:
            return self.headers
        rest = tuple((k, v) for k, v in self.headers if k != "authorization")
        return (("authorization", f"Bearer {self.api_key}"), *rest)

    def with_endpoint(self, endpoint: str) -> AgentConfig:
        """A copy exporting to `endpoint` (same rules as the variable)."""
        return replace(
            self, endpoint=normalize_endpoint(endpoint, "endpoint argument", insecure=self.insecure)
        )

    def with_api_key(self, api_key: str) -> AgentConfig:
        """A copy authenticating with `api_key`."""
        return replace(self, api_key=check_api_key(api_key, "api_key argument"))


def normalize_endpoint(value: str, source: str, *, insecure: bool) -> str:
    """Return ``http://host:port`` or ``https://host:port`` for a configured endpoint.

    ``http://`` means plaintext and ``https://`` TLS whatever INSECURE says; a bare
    ``host:port`` means TLS unless INSECURE is true (the OTLP spec's rule).
    """
    raw = value.strip()
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = ("http" if insecure else "https"), raw
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(
            f"{source}={raw!r}: scheme {scheme!r} is not supported; "
            "use http://host:port (plaintext) or https://host:port (TLS)"
        )
    parts = urlsplit(f"//{rest}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{source}: credentials in the endpoint URL are not sent; "
            "remove them and set OTEL_AGENTS_API_KEY instead"
        )
    if not parts.hostname or port == -1 or parts.path not in ("", "/") or parts.query:
        raise ConfigError(
            f"{source}={raw!r} is not a gRPC endpoint; use scheme://host:port with no path, "
            "e.g. http://localhost:4317"
        )
    return f"{scheme}://{parts.netloc}"


def check_api_key(value: str, source: str) -> str:
    """Return the key stripped, or raise `ConfigError` (never echoing the key)."""
    key = value.strip()
    if not _API_KEY.fullmatch(key):
        raise ConfigError(
            f"{source} is empty or contains spaces, control or non-ASCII characters, which a "
            "gRPC header cannot carry; set it to the key exactly as issued"
        )
    return key


class _Env:
    """Typed reads of environment variables; an empty value counts as unset (OTel spec)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, *names: str) -> tuple[str, str] | None:
        """The first set variable among `names` (signal-specific first) as (name, value)."""
        for name in names:
            value = self._environ.get(name, "").strip()
            if value:
                return name, value
        return None

    def value(self, *names: str) -> str | None:
        found = self.get(*names)
        return found[1] if found else None

    def boolean(self, *names: str) -> bool:
        found = self.get(*names)
        if found is None:
            return False
        name, raw = found
        if raw.lower() not in ("true", "false"):
            raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")
        return raw.lower() == "true"

    def compression(self, *names: str) -> Compression:
        found = self.get(*names)
        if found is None:
            return "gzip"
        name, raw = found
        if raw.lower() == "gzip":
            return "gzip"
        if raw.lower() == "none":
            return "none"
        raise ConfigError(f"{name}={raw!r} is not supported; use gzip or none")

    def number(self, *names: str, default: float, unit: str, minimum: float = 0.0) -> float:
        found = self.get(*names)
        if found is None:
            return default
        name, raw = found
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0 or number < minimum:
            floor = f"at least {minimum:g}" if minimum else "a positive number"
            raise ConfigError(f"{name}={raw!r} is invalid; give {floor} in {unit}")
        return number

    def pairs(self, *names: str, header: bool) -> tuple[tuple[str, str], ...]:
        """Parse ``k1=v1,k2=v2`` with URL-decoded values; header keys are lower-cased."""
        found = self.get(*names)
        if found is None:
            return ()
        name, raw = found
        result: dict[str, str] = {}
        for position, item in enumerate(raw.split(","), start=1):
            if not item.strip():
                continue  # tolerate a trailing or doubled comma
            key, sep, encoded = item.partition("=")
            key = key.strip().lower() if header else key.strip()
            value = unquote(encoded.strip())
            # Messages show the key and position only: values may be secrets.
            if not sep or not key:
                raise ConfigError(
                    f"{name}: item {position} is not key=value; write key1=value1,key2=value2 "
                    "and URL-encode commas and other special characters in values"
                )
            if header and (not _HEADER_KEY.fullmatch(key) or key.endswith("-bin")):
                raise ConfigError(
                    f"{name}: header {key!r} is not a valid gRPC metadata key; "
                    "use letters, digits, '-', '_' or '.', not ending in -bin"
                )
            if header and not _HEADER_VALUE.fullmatch(value):
                raise ConfigError(
                    f"{name}: the value of header {key!r} has non-ASCII or control characters; "
                    "gRPC metadata values must be printable ASCII"
                )
            result[key] = value
        return tuple(result.items())
