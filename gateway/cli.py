"""The `otel-gateway` command: serve, and manage tenants."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from gateway import tenants
from gateway.settings import GatewaySettings


def _parser(default_file: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-gateway",
        description="Multi-tenant OTLP metrics gateway. Settings come from GATEWAY_* "
        "variables (see docs/gateway.md).",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gateway (the default)")
    tenant_cmd = commands.add_parser("tenants", help="manage tenants and their API keys")
    tenant_actions = tenant_cmd.add_subparsers(dest="action", required=True)
    add = tenant_actions.add_parser(
        "add", help="create a tenant, or a new key for an existing one; prints the key once"
    )
    add.add_argument("name", help="tenant id: the tenant_id label of its metrics")
    listing = tenant_actions.add_parser("list", help="list tenants and their key ids")
    for sub in (add, listing):
        sub.add_argument(
            "--file",
            type=Path,
            default=default_file,
            help=f"tenants file (default: {default_file}, from GATEWAY_TENANTS_FILE)",
        )
    return parser


def _tenants_add(path: Path, name: str) -> int:
    table = tenants.load(path)
    is_new = name not in table.tenants
    table, key = tenants.add_key(table, name)
    tenants.save(path, table)
    what = "created tenant" if is_new else "added a key to tenant"
    print(f"{what} {name!r} in {path}", file=sys.stderr)
    print("API key (shown once; agents send it as 'authorization: Bearer <key>'):", file=sys.stderr)
    print(key)
    return 0


def _tenants_list(path: Path) -> int:
    table = tenants.load(path)
    if not table.tenants:
        print(f"no tenants in {path}", file=sys.stderr)
    for name, records in sorted(table.tenants.items()):
        keys = ", ".join(f"{r.key_id} (created {r.created})" for r in records) or "no keys"
        print(f"{name}: {keys}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    try:
        settings = GatewaySettings()
    except ValidationError as exc:
        print(f"otel-gateway: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    args = _parser(settings.tenants_file).parse_args(argv)
    try:
        if args.command == "tenants":
            if args.action == "add":
                return _tenants_add(args.file, args.name)
            return _tenants_list(args.file)
    except (ValueError, OSError) as exc:
        print(f"otel-gateway: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from gateway.server import serve  # grpc and uvicorn only when serving

    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        logging.getLogger("gateway").error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
