"""Thanos Receive, Query and Ruler as processes of a `LocalStack`, for more than one Prometheus.

Prometheus servers remote-write to a Receive (`Receive.remote_write_url`); a Query
reads every Receive (and the Ruler) over gRPC (StoreAPI) and answers the Prometheus
HTTP API, with series that differ only in a replica label merged into one; a Ruler
evaluates rule files against that Query and sends its alerts to Alertmanager. The
binary comes from scripts/build-thanos.sh. Each start function picks free ports on
127.0.0.1 and returns at once; wait with `stack.wait_ready(x.process)`, and
`stack.stop_all()` stops these processes with the rest of the stack.
stack/thanos_stack.py puts them together with sharded Prometheus servers.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.local import REPO, LocalStack, Process, StackError, free_port, http_get

BUILD_THANOS = REPO / "scripts" / "build-thanos.sh"

REPLICA_LABELS = ("replica", "receive_replica", "prometheus_shard")
"""Labels that tell copies of one series apart, and that Query drops to merge them:
`replica` in the external labels of each Prometheus of an HA pair,
`receive_replica` in the `--label` of each Receive, `prometheus_shard` in the
external labels of each shard (prometheus/shard-K-of-N.yml): every shard scrapes
the gateway, so its series arrive once per shard."""

RECEIVE_TENANT_LABEL = "receive_tenant"
"""The label Receive puts its own tenant in (`default-tenant`: Prometheus sends no
THANOS-TENANT header). Its default name, tenant_id, would replace the tenant_id of
every agent's series with "default-tenant"."""

ALERT_LABEL_DROP = (RECEIVE_TENANT_LABEL, *REPLICA_LABELS)
"""Labels the Ruler removes from its alerts, so that they carry the labels a single
Prometheus would send (Alertmanager groups by alertname and tenant_id, and
inhibits on tenant_id, service and instance)."""

# Thanos waits up to 2 minutes (its default) for open requests on SIGTERM;
# LocalStack.stop sends SIGKILL after 10 s, so keep the wait below that.
_GRACE = "5s"
_ENDPOINTS_RELOAD = "2s"


def thanos_binary() -> Path:
    """The Thanos built from thanos/ (built now if it is not cached)."""
    result = subprocess.run(
        [str(BUILD_THANOS)], stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    if result.returncode != 0:
        raise StackError(f"building Thanos failed ({BUILD_THANOS})")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class Receive:
    """A started `thanos receive` that ingests every series it is sent (no hashring)."""

    process: Process
    http_port: int
    grpc_port: int
    remote_write_port: int

    @property
    def remote_write_url(self) -> str:
        """The `url` of a Prometheus `remote_write` entry."""
        return f"http://127.0.0.1:{self.remote_write_port}/api/v1/receive"

    @property
    def store_address(self) -> str:
        """Its StoreAPI (gRPC, plaintext), for `start_query`."""
        return f"127.0.0.1:{self.grpc_port}"


@dataclass
class Query:
    """A started `thanos query` over a fixed list of StoreAPI endpoints."""

    process: Process
    http_port: int
    grpc_port: int
    endpoints_file: Path
    """The --endpoint.sd-config-file it reads (`set_stores` rewrites it)."""

    @property
    def url(self) -> str:
        """Its web UI and Prometheus-compatible HTTP API."""
        return f"http://127.0.0.1:{self.http_port}"

    def set_stores(self, stores: Sequence[str]) -> None:
        """Read these StoreAPI endpoints from now on (such as a Ruler started after
        this Query); wait for them with `wait_stores`."""
        _write_endpoints(self.endpoints_file, stores)

    def query(
        self, promql: str, at: float | None = None, *, dedup: bool = True
    ) -> list[dict[str, Any]]:
        """The result of an instant query, evaluated now or at the Unix time `at`;
        `dedup=False` keeps each replica's copy of a series."""
        params = {"query": promql, "dedup": str(dedup).lower()}
        if at is not None:
            params["time"] = f"{at:.3f}"
        result: list[dict[str, Any]] = self._get("/api/v1/query", params)["result"]
        return result

    def store_addresses(self) -> list[str]:
        """The StoreAPI endpoints this Query reached at its last check."""
        data: dict[str, list[dict[str, Any]] | None] = self._get("/api/v1/stores", {})
        return sorted(
            str(store["name"])
            for stores in data.values()
            for store in stores or []
            if store.get("lastError") is None
        )

    def wait_stores(self, addresses: Sequence[str], timeout: float = 30.0) -> None:
        """Wait until Query reaches every one of `addresses`. Query turns ready after
        its first round of endpoint checks even if some failed (a store that started
        late); until it reaches them, its results are partial or empty."""
        deadline = time.monotonic() + timeout
        connected: list[str] = []
        while time.monotonic() < deadline:
            connected = self.store_addresses()
            if set(addresses) <= set(connected):
                return
            time.sleep(0.2)
        raise StackError(
            f"after {timeout:.0f} s, {self.process.name} is connected to {connected}, "
            f"not to all of {list(addresses)}; its log ({self.process.log}):\n"
            f"{self.process.log_tail()}"
        )

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        status, body = http_get(url, timeout=5.0)
        if status != 200:
            raise StackError(f"{self.process.name} answered {status} to {url}: {body[:300]!r}")
        return json.loads(body)["data"]


def start_receive(
    stack: LocalStack,
    binary: Path,
    name: str = "thanos-receive",
    labels: Mapping[str, str] | None = None,
) -> Receive:
    """Start `thanos receive` with its TSDB under the run directory, keeping data in
    memory and on local disk only (no object storage).

    `labels` are its external labels; the default `receive_replica="0"` is one of
    `REPLICA_LABELS`. Samples get a `RECEIVE_TENANT_LABEL` label too (`default-tenant`
    when the writer sends no THANOS-TENANT header).
    """
    http, grpc, remote_write, capnproto = (free_port() for _ in range(4))
    home = stack.run_dir / name
    home.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary),
        "receive",
        f"--http-address=127.0.0.1:{http}",
        f"--grpc-address=127.0.0.1:{grpc}",
        f"--remote-write.address=127.0.0.1:{remote_write}",
        # Replication between receivers; it listens even when unused
        # (default 0.0.0.0:19391, which two receivers could not share).
        f"--receive.capnproto-address=127.0.0.1:{capnproto}",
        f"--tsdb.path={home / 'data'}",
        f"--receive.tenant-label-name={RECEIVE_TENANT_LABEL}",
        f"--http-grace-period={_GRACE}",
        f"--grpc-grace-period={_GRACE}",
        *_label_flags(labels or {"receive_replica": "0"}),
    ]
    process = stack.start_process(name, argv, {}, ready_url=f"http://127.0.0.1:{http}/-/ready")
    return Receive(process, http, grpc, remote_write)


def start_query(
    stack: LocalStack,
    binary: Path,
    stores: Sequence[str],
    name: str = "thanos-query",
    replica_labels: Sequence[str] = REPLICA_LABELS,
) -> Query:
    """Start `thanos query` over the StoreAPI addresses `stores` (such as
    `Receive.store_address`), merging series that differ only in `replica_labels`.

    Ready means serving, not connected: call `Query.wait_stores` before querying.
    """
    http, grpc = free_port(), free_port()
    home = stack.run_dir / name
    home.mkdir(parents=True, exist_ok=True)
    endpoints = home / "endpoints.yml"
    _write_endpoints(endpoints, stores)
    argv = [
        str(binary),
        "query",
        f"--http-address=127.0.0.1:{http}",
        f"--grpc-address=127.0.0.1:{grpc}",
        f"--endpoint.sd-config-file={endpoints}",
        # Query re-reads that file on this interval only (default 5m), not when it
        # changes: `Query.set_stores` takes effect within it.
        f"--endpoint.sd-config-reload-interval={_ENDPOINTS_RELOAD}",
        f"--http-grace-period={_GRACE}",
        f"--grpc-grace-period={_GRACE}",
        *(f"--query.replica-label={label}" for label in replica_labels),
    ]
    process = stack.start_process(name, argv, {}, ready_url=f"http://127.0.0.1:{http}/-/ready")
    return Query(process, http, grpc, endpoints)


@dataclass
class Ruler:
    """A started `thanos rule`: rule files evaluated against a Query."""

    process: Process
    http_port: int
    grpc_port: int

    @property
    def url(self) -> str:
        """Its web UI and API (`/api/v1/rules`, `/api/v1/alerts`)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def store_address(self) -> str:
        """Its StoreAPI (gRPC, plaintext): the series its recording rules wrote, for
        `Query.set_stores`. Rules that read other rules' results need it there."""
        return f"127.0.0.1:{self.grpc_port}"

    def rules(self) -> list[dict[str, Any]]:
        """Every rule of every group, as `/api/v1/rules` describes it (health, lastError)."""
        url = f"{self.url}/api/v1/rules"
        status, body = http_get(url, timeout=5.0)
        if status != 200:
            raise StackError(f"{self.process.name} answered {status} to {url}: {body[:300]!r}")
        groups = json.loads(body)["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]


def start_ruler(
    stack: LocalStack,
    binary: Path,
    query: Query,
    rule_files: Sequence[Path],
    eval_interval: str,
    alertmanager_url: str | None = None,
    name: str = "thanos-rule",
) -> Ruler:
    """Start `thanos rule` evaluating `rule_files` every `eval_interval` against
    `query`, with its TSDB under the run directory, sending alerts to
    `alertmanager_url` without the labels of `ALERT_LABEL_DROP`.

    Its recorded series live in its own TSDB: add `Ruler.store_address` to the
    Query's stores, or rules that read other rules' results find nothing.
    """
    http, grpc = free_port(), free_port()
    home = stack.run_dir / name
    home.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary),
        "rule",
        f"--http-address=127.0.0.1:{http}",
        f"--grpc-address=127.0.0.1:{grpc}",
        f"--data-dir={home / 'data'}",
        *(f"--rule-file={path}" for path in rule_files),
        f"--query={query.url}",
        # Its default is 1m; the rules' `for` and the alert delays of
        # docs/operations.md assume Prometheus's 10 s.
        f"--eval-interval={eval_interval}",
        *(f"--alert.label-drop={label}" for label in ALERT_LABEL_DROP),
        f"--alert.query-url={query.url}",
        *([f"--alertmanagers.url={alertmanager_url}"] if alertmanager_url else []),
        f"--http-grace-period={_GRACE}",
        f"--grpc-grace-period={_GRACE}",
    ]
    process = stack.start_process(name, argv, {}, ready_url=f"http://127.0.0.1:{http}/-/ready")
    return Ruler(process, http, grpc)


def _write_endpoints(path: Path, stores: Sequence[str]) -> None:
    # JSON is YAML: the endpoint file of --endpoint.sd-config-file (the --endpoint
    # flag is deprecated). Renamed into place, so that Query never reads half a file.
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"endpoints": [{"address": a} for a in stores]}, indent=2))
    partial.replace(path)


def _label_flags(labels: Mapping[str, str]) -> list[str]:
    # Thanos parses the value as a quoted string: --label=key="value".
    return [f"--label={key}={json.dumps(value)}" for key, value in labels.items()]
