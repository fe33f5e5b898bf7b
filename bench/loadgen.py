"""The Go load generator (bench/loadgen): built once into a cache, run, its JSON parsed.

`python -m bench.loadgen` prints the binary's path (building it if needed);
`python -m bench.loadgen -- <loadgen flags>` runs it. The binary is cached under
`~/.cache/otel-agents-pipeline/loadgen/<sha of the Go files>/loadgen`, like the
Collector (scripts/build-collector.sh): editing a .go file, go.mod or go.sum
builds a new one; otherwise nothing is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SOURCE = Path(__file__).resolve().parent / "loadgen"

Target = Literal["grpc", "http", "legacy-json"]


class LoadgenError(RuntimeError):
    """The load generator could not be built or did not produce a result."""


def cache_root() -> Path:
    """The cache folder shared with build-collector.sh."""
    if "OTEL_PIPELINE_CACHE" in os.environ:
        return Path(os.environ["OTEL_PIPELINE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "otel-agents-pipeline"


def source_key() -> str:
    """16 hex digits of the SHA-256 of every Go source, go.mod and go.sum (names and content)."""
    digest = hashlib.sha256()
    files = sorted([*SOURCE.glob("*.go"), SOURCE / "go.mod", SOURCE / "go.sum"])
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def loadgen_binary() -> Path:
    """The built load generator; built now (a few seconds) when not cached."""
    root = cache_root()
    binary = root / "loadgen" / source_key() / "loadgen"
    if binary.is_file() and os.access(binary, os.X_OK):
        print(f"[loadgen] cached: {binary}", file=sys.stderr)
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name("loadgen.partial")
    env = {
        **os.environ,
        # The Collector's module and build caches: grpc and the OTLP protos
        # are usually there already.
        "GOMODCACHE": str(root / "go" / "mod"),
        "GOCACHE": str(root / "go" / "build"),
        "GOTOOLCHAIN": "local",  # never download a Go toolchain
        "GOFLAGS": (os.environ.get("GOFLAGS", "") + " -modcacherw -mod=readonly").strip(),
    }
    print(f"[loadgen] building {binary}", file=sys.stderr)
    try:
        result = subprocess.run(
            ["go", "build", "-trimpath", "-o", str(partial), "."],
            cwd=SOURCE,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise LoadgenError("Go is not installed (https://go.dev/doc/install)") from exc
    if result.returncode != 0:
        raise LoadgenError(f"building the load generator failed:\n{result.stdout}")
    partial.rename(binary)  # only a complete build is ever taken as cached
    return binary


@dataclass(frozen=True)
class LoadOptions:
    """One run of the load generator (its flags; see `loadgen -h`)."""

    target: Target
    addr: str
    keys_file: Path | None = None
    points: int = 20
    gzip: bool = False
    concurrency: int = 64
    conns: int = 8
    rate: float = 0.0
    """Open loop at this many requests/s in total; 0 = closed loop."""
    arrival: Literal["poisson", "even"] = "poisson"
    duration_s: float = 10.0
    warmup_s: float = 2.0
    timeout_s: float = 10.0
    retry: bool = False
    agents: int = 2

    def argv(self, binary: Path) -> list[str]:
        """The command line running these options."""
        argv = [
            str(binary),
            f"-target={self.target}",
            f"-addr={self.addr}",
            f"-points={self.points}",
            f"-gzip={str(self.gzip).lower()}",
            f"-concurrency={self.concurrency}",
            f"-conns={self.conns}",
            f"-rate={self.rate}",
            f"-arrival={self.arrival}",
            f"-duration={self.duration_s}s",
            f"-warmup={self.warmup_s}s",
            f"-timeout={self.timeout_s}s",
            f"-retry={str(self.retry).lower()}",
            f"-agents={self.agents}",
        ]
        if self.keys_file is not None:
            argv.append(f"-keys={self.keys_file}")
        return argv


@dataclass(frozen=True)
class Latency:
    """Milliseconds from (scheduled) send to answer; None when nothing was measured."""

    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None
    mean: float | None


@dataclass(frozen=True)
class LoadResult:
    """What the load generator measured over its window."""

    requests: int
    ok: int
    statuses: dict[str, int]
    requests_per_s: float
    ok_per_s: float
    points_per_s: float
    latency_ms: Latency
    """Closed loop: from send to answer; open loop: from the scheduled send time."""
    lag_ms: Latency
    """Open loop: how late requests left against their schedule (the generator or its
    senders falling behind); part of latency_ms."""
    completed_per_s: float
    """Answers received within the window, whenever their requests were scheduled."""
    cpu_s: float
    """The generator's own CPU over the window."""
    duration_s: float
    bytes_per_request: float
    retries: int
    unsent: int
    """Open loop: requests still queued when the window closed (overload)."""
    errors: list[str]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> LoadResult:
        """Parse the generator's output object."""
        return cls(
            requests=int(document["requests"]),
            ok=int(document["ok"]),
            statuses={str(k): int(v) for k, v in document["statuses"].items()},
            requests_per_s=float(document["requests_per_s"]),
            ok_per_s=float(document["ok_per_s"]),
            points_per_s=float(document["points_per_s"]),
            latency_ms=Latency(**document["latency_ms"]),
            lag_ms=Latency(**document["lag_ms"]),
            completed_per_s=float(document["completed_per_s"]),
            cpu_s=float(document["cpu_s"]),
            duration_s=float(document["duration_s"]),
            bytes_per_request=float(document["bytes_per_request"]),
            retries=int(document["retries"]),
            unsent=int(document["unsent"]),
            errors=[str(e) for e in document.get("errors") or []],
            raw=document,
        )

    @property
    def refused(self) -> dict[str, int]:
        """Every status other than OK / 200, with its count."""
        return {k: v for k, v in self.statuses.items() if k not in ("OK", "200")}


def run_loadgen(
    options: LoadOptions,
    *,
    binary: Path | None = None,
    cpus: str | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> LoadResult:
    """Run the generator to completion (pinned to `cpus` with taskset when given).

    `on_phase("measure")` and `on_phase("done")` are called, from a reader
    thread, the moment the measured window opens and closes.
    """
    argv = options.argv(binary or loadgen_binary())
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    other: list[str] = []

    def read_stderr() -> None:
        assert process.stderr is not None
        for raw_line in process.stderr:
            line = raw_line.decode(errors="replace").rstrip()
            if line.startswith("phase "):
                if on_phase is not None:
                    on_phase(line.removeprefix("phase "))
            else:
                other.append(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    limit = options.warmup_s + options.duration_s + options.timeout_s + 60
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        process.kill()

    timer = threading.Timer(limit, kill)
    timer.start()
    try:
        assert process.stdout is not None
        stdout = process.stdout.read()
        process.wait()
    except BaseException:
        process.kill()  # interrupted: leave no generator behind
        process.wait()
        raise
    finally:
        timer.cancel()
    if timed_out.is_set():
        raise LoadgenError(f"the load generator did not finish within {limit:.0f} s")
    reader.join(5)
    if process.returncode != 0:
        raise LoadgenError(
            f"the load generator exited with {process.returncode}: {' '.join(other)[-2000:]}"
        )
    try:
        return LoadResult.from_json(json.loads(stdout))
    except (ValueError, KeyError, TypeError) as exc:
        raise LoadgenError(f"unreadable load generator output: {stdout[:500]!r}") from exc


def main(argv: list[str]) -> int:
    """Print the binary's path, or run it with the arguments after `--`."""
    try:
        binary = loadgen_binary()
    except LoadgenError as exc:
        print(f"[loadgen] error: {exc}", file=sys.stderr)
        return 1
    if argv and argv[0] == "--":
        return subprocess.call([str(binary), *argv[1:]])
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
