"""The platform's previous design: a FastAPI handler under uvicorn that validates the
old JSON reporter's payload with pydantic and keeps the latest report per agent in a
dict. Nothing is forwarded, nothing is authenticated.

The payload is the one `gateway/legacy.py` still accepts on
`POST /api/metrics/agent/{tenant_id}` (its `LegacyReport` model is reused). One
report carries at most 7 values; so that a request can carry as much as a
20-point OTLP export, a JSON list of reports is accepted too (the load
generator's `-target legacy-json -points 20` sends three: 7 + 7 + 6 values).

Run: `python -m bench.baselines.previous_design --port 8080 [--workers N]`.
"""

from __future__ import annotations

import argparse
from typing import Annotated

import uvicorn
from fastapi import Body, FastAPI

from gateway.legacy import LegacyReport

Payload = LegacyReport | list[LegacyReport]


def create_app() -> FastAPI:
    """The previous design's app, with its in-memory store."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    store: dict[tuple[str, str], LegacyReport] = {}

    @app.post("/api/metrics/agent/{tenant_id}")
    async def post_report(
        tenant_id: str, payload: Annotated[Payload, Body()]
    ) -> dict[str, str | int]:
        """Validate and store the report(s) of one tenant's agent(s)."""
        reports = payload if isinstance(payload, list) else [payload]
        for report in reports:
            store[(tenant_id, report.agent_id or report.agent_type)] = report
        return {"status": "accepted", "reports": len(reports)}

    @app.get("/healthz")
    async def healthz() -> dict[str, str | int]:
        """Alive, and how many agents are stored."""
        return {"status": "ok", "agents": len(store)}

    return app


def main() -> None:
    """Parse the command line and serve with uvicorn until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args()
    uvicorn.run(
        "bench.baselines.previous_design:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
