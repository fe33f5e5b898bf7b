"""Where metrics go: the OTLP endpoint rules of each protocol, and hints for likely mistakes.

Where this sits: agent code ──(otel_agents: settings ← *endpoint*)──▶ OTLP ──▶ gateway.

The specification's rules (OpenTelemetry Protocol Exporter):

- OTLP/gRPC: ``http://host:port`` is plaintext and ``https://host:port`` TLS whatever
  INSECURE says; a bare ``host:port`` is TLS unless INSECURE is true. gRPC has no path.
- OTLP/HTTP: a URL whose scheme decides TLS. ``OTEL_EXPORTER_OTLP_ENDPOINT`` is a base URL
  to which ``/v1/metrics`` is appended; ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` (and the
  `endpoint` argument when it has a path) is used as is.

The gateway listens for OTLP/gRPC on 4317 and OTLP/HTTP on 4318, the OTLP defaults.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

Protocol = Literal["grpc", "http/protobuf"]
PROTOCOLS: tuple[Protocol, ...] = ("grpc", "http/protobuf")

GRPC_PORT = 4317
HTTP_PORT = 4318
METRICS_PATH = "/v1/metrics"
DEFAULT_GRPC_ENDPOINT = f"http://localhost:{GRPC_PORT}"
DEFAULT_HTTP_ENDPOINT = f"http://localhost:{HTTP_PORT}{METRICS_PATH}"
# An IPv6 host in brackets, then an optional port: what urlsplit checks only in part.
_BRACKETED = re.compile(r"\[[0-9A-Fa-f:.]+(%[\w.-]+)?\](:\d*)?")


class EndpointError(ValueError):
    """An endpoint no exporter can use; the message names its source and what to write."""


@dataclass(frozen=True)
class Endpoint:
    """A resolved endpoint: the URL to export to and how it was written."""

    url: str
    """OTLP/gRPC: ``scheme://host:port``; OTLP/HTTP: the full URL requests are POSTed to."""
    source: str
    """The variable (or argument) it came from, or "default"."""
    written: str
    """The value as configured, for messages."""
    tls_implied: bool = False
    """True when TLS comes from a missing scheme (a bare ``host:port``), not from https://."""

    @property
    def use_tls(self) -> bool:
        """True when the connection is encrypted."""
        return self.url.startswith("https://")

    @property
    def host_port(self) -> tuple[str, int]:
        """Host and port (the scheme's default port when none is written)."""
        parts = urlsplit(self.url)
        return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def grpc_endpoint(
    value: str, source: str, *, insecure: bool, warn: Callable[[str], None]
) -> Endpoint:
    """An OTLP/gRPC endpoint: ``scheme://host:port``; a path is ignored with a warning."""
    scheme, netloc, path, query, implied = _split(value, source, insecure=insecure)
    url = f"{scheme}://{netloc}"
    port = urlsplit(url).port
    if path not in ("", "/") or query:
        http_like = path.rstrip("/").endswith(METRICS_PATH) or port == HTTP_PORT
        warn(
            f"{source}={value!r}: gRPC does not use a path, so OTLP/gRPC goes to {url}"
            + (
                "; this looks like an OTLP/HTTP URL: set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
                " to send OTLP/HTTP there"
                if http_like
                else "; remove the path"
            )
        )
    elif port == HTTP_PORT:
        warn(
            f"{source}={value!r}: port {HTTP_PORT} is the OTLP/HTTP port; the gateway takes "
            f"OTLP/gRPC on {GRPC_PORT}: use port {GRPC_PORT}, or set "
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
        )
    return Endpoint(url, source, value, implied)


def http_endpoint(
    value: str,
    source: str,
    *,
    append_path: bool,
    insecure: bool,
    warn: Callable[[str], None],
) -> Endpoint:
    """An OTLP/HTTP URL: `value` with ``/v1/metrics`` appended (`append_path`) or as is."""
    scheme, netloc, path, query, implied = _split(value, source, insecure=insecure)
    if implied:
        warn(
            f"{source}={value!r} has no scheme, which an OTLP/HTTP URL needs: using "
            f"{scheme}://{netloc}; write http:// (plaintext) or https:// (TLS) in front"
        )
    if append_path:
        if path.rstrip("/").endswith(METRICS_PATH):
            warn(
                f"{source}={value!r} is a base URL to which {METRICS_PATH} is appended "
                "(OpenTelemetry specification); to give the full URL, set "
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT instead"
            )
        path = path.rstrip("/") + METRICS_PATH
    elif path in ("", "/"):
        warn(
            f"{source}={value!r} is used as is (OpenTelemetry specification), so metrics are "
            f"POSTed to /; the gateway takes them at {METRICS_PATH}: write "
            f"{scheme}://{netloc}{METRICS_PATH}"
        )
    url = f"{scheme}://{netloc}{path or '/'}" + (f"?{query}" if query else "")
    if urlsplit(url).port == GRPC_PORT:
        warn(
            f"{source}={value!r}: port {GRPC_PORT} is the OTLP/gRPC port; the gateway takes "
            f"OTLP/HTTP on {HTTP_PORT}: use port {HTTP_PORT}, or set "
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc"
        )
    return Endpoint(url, source, value, implied)


def argument_endpoint(
    value: str, protocol: Protocol, *, insecure: bool, warn: Callable[[str], None]
) -> Endpoint:
    """The `endpoint` argument: OTLP/HTTP appends ``/v1/metrics`` only when it has no path."""
    source = "endpoint argument"
    if protocol == "grpc":
        return grpc_endpoint(value, source, insecure=insecure, warn=warn)
    _, _, path, _, _ = _split(value, source, insecure=insecure)
    return http_endpoint(value, source, append_path=path in ("", "/"), insecure=insecure, warn=warn)


def _split(value: str, source: str, *, insecure: bool) -> tuple[str, str, str, str, bool]:
    """(scheme, netloc, path, query, scheme implied) of an endpoint, or EndpointError."""
    raw = value.strip()
    scheme, sep, rest = raw.partition("://")
    implied = not sep
    if implied:
        scheme, rest = ("http" if insecure else "https"), raw
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise EndpointError(
            f"{source}={raw!r}: scheme {scheme!r} is not supported; "
            "write http://host:port (plaintext) or https://host:port (TLS)"
        )
    try:
        parts = urlsplit(f"//{rest}")
    except ValueError as exc:  # an unclosed IPv6 bracket: http://[::1:4317
        raise EndpointError(
            f"{source}={raw!r} is not a URL ({exc}); write scheme://host:port, with an IPv6 "
            f"address in brackets, e.g. http://[::1]:{GRPC_PORT}"
        ) from None
    if ("[" in parts.netloc or "]" in parts.netloc) and not _BRACKETED.fullmatch(parts.netloc):
        raise EndpointError(
            f"{source}={raw!r} is not a URL (stray brackets); write scheme://host:port, with "
            f"an IPv6 address in brackets, e.g. http://[::1]:{GRPC_PORT}"
        )
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.username is not None or parts.password is not None:
        raise EndpointError(
            f"{source}: credentials in the endpoint URL are not sent; "
            "remove them and set OTEL_AGENTS_API_KEY instead"
        )
    if not parts.hostname or port == -1:
        raise EndpointError(
            f"{source}={raw!r} has no usable host and port; write scheme://host:port, "
            f"e.g. http://localhost:{GRPC_PORT}"
        )
    return scheme, parts.netloc, parts.path, parts.query, implied
