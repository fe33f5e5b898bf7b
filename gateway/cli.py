"""The `otel-gateway` command: serve, manage tenants, list and retire agents."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from gateway import tenants
from gateway.fleet import cli as agents_cli
from gateway.settings import GatewaySettings


def _parser(settings: GatewaySettings) -> argparse.ArgumentParser:
    default_file = settings.tenants_file
    parser = argparse.ArgumentParser(
        prog="otel-gateway",
        description="Multi-tenant OTLP metrics gateway. Settings come from GATEWAY_* "
        "variables (see docs/gateway.md).",
    )
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the gateway (the default)")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="N processes sharing the ports (default: GATEWAY_WORKERS, 1); "
        "more than 1 needs GATEWAY_STATE_URL",
    )
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    tenant_cmd = commands.add_parser("tenants", help="manage tenants and their API keys")
    tenant_actions = tenant_cmd.add_subparsers(dest="action", required=True)
    add = tenant_actions.add_parser(
        "add", help="create a tenant, or a new key for an existing one; prints the key once"
    )
    add.add_argument("name", help="tenant id: the tenant_id label of its metrics")
    add.add_argument(
        "--no-key",
        action="store_true",
        help="register the tenant without an API key (it authenticates by JWT or certificate)",
    )
    listing = tenant_actions.add_parser(
        "list", help="list tenants and their key ids (with revocation times), never keys"
    )
    rotate = tenant_actions.add_parser(
        "rotate",
        help="add a new key to an existing tenant and print it once; the old keys keep "
        "working until revoked",
    )
    rotate.add_argument("name", help="tenant id")
    rotate.add_argument(
        "--revoke-old",
        action="store_true",
        help="also revoke every older key at once (a leaked key: agents must switch now)",
    )
    revoke = tenant_actions.add_parser(
        "revoke", help="revoke keys; the running gateway refuses them within seconds"
    )
    revoke.add_argument("name", help="tenant id")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("key_ids", nargs="*", default=[], metavar="KEY_ID", help="key ids")
    which.add_argument("--all", action="store_true", help="every key of the tenant")
    remove = tenant_actions.add_parser(
        "remove", help="delete a tenant and its keys (its JWTs and certificates stop working)"
    )
    remove.add_argument("name", help="tenant id")
    agents_cli.add_parser(commands, settings)
    for sub in (add, listing, rotate, revoke, remove):
        sub.add_argument(
            "--file",
            type=Path,
            default=default_file,
            help=f"tenants file (default: {default_file}, from GATEWAY_TENANTS_FILE)",
        )
    return parser


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _print_key(key: str) -> None:
    _say("API key (shown once; agents send it as 'authorization: Bearer <key>'):")
    print(key)


def _tenants_add(path: Path, name: str, no_key: bool) -> int:
    table = tenants.load(path)
    is_new = not table.knows(name)
    if no_key:
        tenants.save(path, tenants.add_tenant(table, name))
        _say(f"{'created' if is_new else 'kept'} tenant {name!r} in {path}, without a key")
        return 0
    table, key = tenants.add_key(table, name)
    tenants.save(path, table)
    what = "created tenant" if is_new else "added a key to tenant"
    _say(f"{what} {name!r} in {path}")
    _print_key(key)
    return 0


def _tenants_list(path: Path) -> int:
    table = tenants.load(path)
    if not table.tenants:
        _say(f"no tenants in {path}")
    for name, records in sorted(table.tenants.items()):
        keys = ", ".join(
            f"{r.key_id} (created {r.created}" + (f", revoked {r.revoked})" if r.revoked else ")")
            for r in records
        )
        print(f"{name}: {keys or 'no keys'}")
    return 0


def _tenants_rotate(path: Path, name: str, revoke_old: bool) -> int:
    table = tenants.load(path)
    if not table.knows(name):
        raise ValueError(f"no tenant {name!r} in {path}: create it with `tenants add {name}`")
    old = tenants.active_key_ids(table, name)
    table, key = tenants.add_key(table, name)
    if revoke_old:
        table, _ = tenants.revoke_keys(table, name, old)
    tenants.save(path, table)
    _say(f"added a key to tenant {name!r} in {path}")
    if old and revoke_old:
        _say(f"revoked its previous key(s): {', '.join(old)}")
    elif old:
        _say(
            f"its previous key(s) {', '.join(old)} still work: once every agent uses the new "
            f"key, run `otel-gateway tenants revoke {name} {' '.join(old)}`"
        )
    _print_key(key)
    return 0


def _tenants_revoke(path: Path, name: str, key_ids: list[str], revoke_all: bool) -> int:
    table = tenants.load(path)
    table, revoked = tenants.revoke_keys(table, name, None if revoke_all else key_ids)
    if not revoked:
        _say(f"nothing to do: the key(s) of tenant {name!r} were already revoked")
        return 0
    tenants.save(path, table)
    _say(
        f"revoked key(s) {', '.join(revoked)} of tenant {name!r}; a running gateway refuses "
        "them once it re-reads the file (GATEWAY_TENANTS_RELOAD_SECONDS)"
    )
    return 0


def _tenants_remove(path: Path, name: str) -> int:
    tenants.save(path, tenants.remove_tenant(tenants.load(path), name))
    _say(f"removed tenant {name!r} and its keys from {path}")
    return 0


def _tenants(args: argparse.Namespace) -> int:
    path: Path = args.file
    if args.action == "add":
        return _tenants_add(path, args.name, args.no_key)
    if args.action == "rotate":
        return _tenants_rotate(path, args.name, args.revoke_old)
    if args.action == "revoke":
        return _tenants_revoke(path, args.name, args.key_ids, args.all)
    if args.action == "remove":
        return _tenants_remove(path, args.name)
    return _tenants_list(path)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    try:
        settings = GatewaySettings()
    except ValidationError as exc:
        print(f"otel-gateway: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    args = _parser(settings).parse_args(argv)
    if args.command == "agents":
        return agents_cli.run(args)
    try:
        if args.command == "tenants":
            return _tenants(args)
    except (ValueError, OSError) as exc:
        print(f"otel-gateway: {exc}", file=sys.stderr)
        return 1
    workers = getattr(args, "workers", None)
    if workers is not None:
        try:
            settings = GatewaySettings(workers=workers)
        except ValidationError as exc:
            print(f"otel-gateway: invalid configuration:\n{exc}", file=sys.stderr)
            return 2
    worker = getattr(args, "worker_index", None)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s"
        + ("" if worker is None else f"[{worker}]")
        + ": %(message)s",
    )
    if settings.workers > 1 and worker is None:
        from gateway.workers import run_workers

        return run_workers(settings)
    from gateway.jwt_auth import JwtConfigError
    from gateway.metrics_http import MetricsConfigError
    from gateway.server import serve  # grpc and uvicorn only when serving
    from gateway.tls import TlsConfigError

    try:
        asyncio.run(serve(settings, worker=worker))
    except (OSError, JwtConfigError, TlsConfigError, MetricsConfigError) as exc:
        logging.getLogger("gateway").error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
