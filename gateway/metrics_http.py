"""The gateway's own /metrics: where it is served and who may read it.

It lists every tenant's name and traffic, so it is for Prometheus, not for agents:
served on its own port (GATEWAY_METRICS_PORT, 9464 on 127.0.0.1 by default, which
the network keeps to Prometheus), and behind a bearer token when one is set
(GATEWAY_METRICS_TOKEN_FILE, the file Prometheus's `authorization.credentials_file`
reads). GATEWAY_METRICS_PORT=none serves it on the HTTP port instead; without a
token start-up then logs a warning.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.app import Gateway

logger = logging.getLogger(__name__)

PATH = "/metrics"
MIN_TOKEN_CHARS = 16


class MetricsConfigError(ValueError):
    """The scrape token file cannot be used; the message names the setting."""


def read_token(path: Path) -> str:
    """The scrape token of GATEWAY_METRICS_TOKEN_FILE, less a trailing newline."""
    try:
        token = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise MetricsConfigError(f"GATEWAY_METRICS_TOKEN_FILE: cannot read {path}: {exc}") from exc
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise MetricsConfigError(
            f"GATEWAY_METRICS_TOKEN_FILE {path}: the token must be at least "
            f"{MIN_TOKEN_CHARS} characters without spaces (e.g. `openssl rand -hex 32`)"
        )
    return token


def metrics_router(gateway: Gateway) -> APIRouter:
    """GET /metrics, asking for the scrape token when one is set."""
    token_file = gateway.settings.metrics_token_file
    # Compared as digests: equal lengths, and the token is not kept in memory as such.
    expected = _digest(read_token(token_file)) if token_file is not None else None
    router = APIRouter()

    @router.get(PATH)
    async def metrics(request: Request) -> Response:
        """The gateway's own metrics in the Prometheus text format."""
        if expected is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                _digest(token.strip()), expected
            ):
                return Response(
                    "/metrics needs the scrape token: authorization: Bearer <the token of "
                    "GATEWAY_METRICS_TOKEN_FILE>\n",
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                    media_type="text/plain",
                )
        return Response(generate_latest(gateway.telemetry.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def metrics_app(gateway: Gateway) -> FastAPI:
    """The application of the separate metrics port: /metrics and /healthz only."""
    app = FastAPI(title="otel-gateway metrics", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(metrics_router(gateway))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up and serving."""
        return {"status": "ok"}

    return app


def warn_if_open(gateway: Gateway) -> None:
    """Say so at start-up when anyone who reaches the HTTP port can read /metrics."""
    settings = gateway.settings
    if settings.metrics_port is None and settings.metrics_token_file is None:
        logger.warning(
            "/metrics (every tenant's name and traffic) is served on the HTTP port "
            "without a token (GATEWAY_METRICS_PORT=none): give it a port of its own or set "
            "GATEWAY_METRICS_TOKEN_FILE (docs/deploy.md)"
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
