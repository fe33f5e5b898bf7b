"""Prometheus shards as processes of a `LocalStack`: prometheus/shard-K-of-N.yml, one each.

Each shard runs the repository's file with its targets written beside it
(targets/*.json, as `LocalStack.start_prometheus` does for prometheus.yml) and one
value replaced: the remote-write URL, which Prometheus 2.x cannot read from a file
or the environment. Which shard scrapes a target is decided by Prometheus's
`hashmod` of its address; `hashmod` here computes the same, so that a test or a
demo can put a Collector on the shard it wants.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stack.local import (
    REPO,
    LocalStack,
    Process,
    StackError,
    collector_targets,
    free_port,
    http_get,
)

PROMETHEUS_DIR = REPO / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
SHARD_RULE_FILES = ("agents.yml",)
"""Rule files each shard loads (its rule_files); the rest run in Thanos Ruler."""
GLOBAL_RULE_FILES = ("pipeline.yml", "dashboards.yml")
"""Rule files that need the global view (every agent, or every instance of a
service): evaluated by Thanos Ruler against Thanos Query."""


def shard_config(index: int, count: int) -> Path:
    """The repository's configuration of shard `index` of `count`."""
    path = PROMETHEUS_DIR / f"shard-{index}-of-{count}.yml"
    if not path.is_file():
        raise StackError(f"{path} is missing: there is no configuration for {count} shards")
    return path


def shard_counts() -> list[int]:
    """The numbers of shards the repository has configurations for."""
    found = (re.fullmatch(r"shard-\d+-of-(\d+)\.yml", p.name) for p in PROMETHEUS_DIR.iterdir())
    return sorted({int(match.group(1)) for match in found if match})


def evaluation_interval() -> str:
    """prometheus.yml's evaluation interval: the rules' `for` and alert delays assume it."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    return str(config["global"]["evaluation_interval"])


def hashmod(value: str, modulus: int) -> int:
    """Prometheus's relabel action `hashmod`: the last 8 bytes of the MD5 of `value`,
    big-endian, modulo `modulus`."""
    digest = hashlib.md5(value.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % modulus


def port_on_shard(shard: int, count: int, host: str = "127.0.0.1") -> int:
    """A free port whose address `host:port` shard `shard` of `count` scrapes."""
    for _ in range(1000):
        port = free_port()
        if hashmod(f"{host}:{port}", count) == shard:
            return port
    raise StackError(f"no free port on {host} hashes to shard {shard} of {count}")


@dataclass
class Shard:
    """A started Prometheus shard."""

    process: Process
    index: int
    port: int

    @property
    def url(self) -> str:
        """Its web UI and API."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """host:port, as in a target file."""
        return f"127.0.0.1:{self.port}"

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The result of an instant query on this shard alone, now or at Unix time `at`."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        status, body = http_get(url, timeout=5.0)
        if status != 200:
            raise StackError(f"{self.process.name} answered {status} to {promql!r}: {body[:300]!r}")
        result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
        return result


def render_config(source: Path, remote_write_url: str) -> str:
    """The text of `source` with its one remote-write URL replaced by `remote_write_url`."""
    text = source.read_text(encoding="utf-8")
    config: dict[str, Any] = yaml.safe_load(text)
    urls = [str(entry["url"]) for entry in config.get("remote_write") or []]
    if len(urls) != 1 or text.count(urls[0]) != 1:
        raise StackError(f"{source}: expected one remote_write URL, written once; found {urls}")
    return text.replace(urls[0], remote_write_url)


def start_shard(
    stack: LocalStack,
    binary: Path,
    index: int,
    count: int,
    remote_write_url: str,
    targets: Mapping[str, Sequence[str]],
    port: int = 0,
) -> Shard:
    """Start Prometheus with shard-`index`-of-`count`.yml, writing to `remote_write_url`.

    `targets` maps each target file's name (collector, gateway, alertmanager, ...) to
    addresses; the shard's own address is its `prometheus` target. Returns at once;
    wait with `stack.wait_ready(shard.process)`.
    """
    port = port or free_port()
    name = f"prometheus-shard-{index}"
    home = stack.run_dir / name
    (home / "targets").mkdir(parents=True, exist_ok=True)
    config = home / "prometheus.yml"
    config.write_text(render_config(shard_config(index, count), remote_write_url))
    rules = home / "rules"
    if not rules.exists():
        rules.symlink_to(RULES_DIR)
    files = {**targets, "prometheus": [f"127.0.0.1:{port}"]}
    for target, addresses in files.items():
        document = (
            collector_targets(target, addresses)
            if target in ("collector", "collector-telemetry")
            else [{"targets": list(addresses), "labels": {"component": target}}]
        )
        (home / "targets" / f"{target}.json").write_text(json.dumps(document))
    argv = [
        str(binary),
        f"--config.file={config}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    process = stack.start_process(name, argv, {}, ready_url=f"http://127.0.0.1:{port}/-/ready")
    return Shard(process, index, port)
