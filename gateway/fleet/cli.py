"""`otel-gateway agents list|forget`: the fleet of a running gateway, through its admin API.

The fleet table lives in the running gateway (and its state file, which only the
gateway writes), so these commands call its HTTP API with an admin key
(`OTEL_GATEWAY_ADMIN_KEY`, or `--key-file`); `list` also takes a tenant's key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.settings import GatewaySettings

KEY_ENV = "OTEL_GATEWAY_ADMIN_KEY"
TIMEOUT_S = 10.0


class ApiError(RuntimeError):
    """The gateway could not be reached or refused the call; the message says why."""


def add_parser(commands: Any, settings: GatewaySettings) -> None:
    """The `agents` subcommand and its actions."""
    scheme = "https" if settings.tls_cert_file else "http"
    default_url = f"{scheme}://127.0.0.1:{settings.http_port}"
    agents = commands.add_parser(
        "agents", help="list the agents a running gateway knows, retire decommissioned ones"
    )
    actions = agents.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every agent with its status and last sighting")
    listing.add_argument("--tenant", help="only this tenant's agents")
    listing.add_argument(
        "--status",
        choices=("up", "silent", "stopped", "retired"),
        help="only agents in this state",
    )
    forget = actions.add_parser(
        "forget",
        help="retire agents at once: no more silence alerts for them; an agent that sends "
        "again is back",
    )
    forget.add_argument("tenant", help="the agents' tenant")
    forget.add_argument(
        "instances", nargs="+", metavar="INSTANCE", help="instance ids, or unique prefixes"
    )
    for sub in (listing, forget):
        sub.add_argument(
            "--url", default=default_url, help=f"the gateway's HTTP address (default {default_url})"
        )
        sub.add_argument(
            "--key-file",
            type=Path,
            help=f"file holding the admin key (default: the {KEY_ENV} variable)",
        )


def run(args: argparse.Namespace) -> int:
    """Carry out `agents list` or `agents forget`; exit status 0 on success."""
    try:
        key = _key(args.key_file)
        if args.action == "forget":
            answer = _call(
                args.url,
                "/api/fleet/forget",
                key,
                {"tenant_id": args.tenant, "instances": args.instances},
            )
            for agent in answer["retired"]:
                what = f"{agent['type']} {agent['service']} {agent['instance']}"
                print(f"retired {answer['tenant_id']} {what}")
            return 0
        document = _call(args.url, "/api/fleet", key)
    except ApiError as exc:
        print(f"otel-gateway agents: {exc}", file=sys.stderr)
        return 1
    rows = [
        (tenant["tenant_id"], agent)
        for tenant in document["tenants"]
        if args.tenant in (None, tenant["tenant_id"])
        for agent in tenant["agents"]
        if args.status in (None, agent["status"])
    ]
    print(_table(rows))
    return 0


def _key(key_file: Path | None) -> str:
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ApiError(f"cannot read the key file {key_file}: {exc.strerror}") from exc
    else:
        key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise ApiError(f"no key: set {KEY_ENV} to an admin key, or pass --key-file")
    return key


def _call(base_url: str, path: str, key: str, body: dict[str, Any] | None = None) -> Any:
    url = base_url.rstrip("/") + path
    if not url.startswith(("http://", "https://")):
        raise ApiError(f"--url {base_url!r} is not an http(s) address")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", exc.reason)
        except (ValueError, AttributeError):
            message = exc.reason
        raise ApiError(f"the gateway answered {exc.code}: {message}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ApiError(f"cannot reach the gateway at {base_url} ({exc}); check --url") from exc


def _table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    header = (
        "TENANT",
        "TYPE",
        "STATUS",
        "SERVICE",
        "INSTANCE",
        "HOST",
        "CLASH",
        "VERSION",
        "LAST SEEN",
        "OVER BUDGET",
    )
    lines = [header] + [
        (
            tenant,
            agent["type"],
            agent["status"],
            agent["service"],
            agent["instance"],
            agent.get("host") or "-",
            ",".join(agent.get("clash_hosts") or ("yes",)) if agent.get("clash") else "-",
            agent["version"] or "-",
            f"{agent['last_seen']} ({agent['seconds_since']:.0f} s ago)",
            ",".join(agent.get("over_budget") or ()) or "-",
        )
        for tenant, agent in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
    return text if rows else text + "\n(no agents)"
