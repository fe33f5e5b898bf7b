"""The scale mix: what the scale benchmark's agents send, from a Python sender.

Run by `run_scale_mix` as `python -m bench.ingest.sender` (pinned to the generator's
core): phases on stderr, a LoadResult document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.loadgen import LoadOptions, LoadResult
from stack.local import REPO


def run_scale_mix(
    keys_file: Path,
    directory: Path,
    options: LoadOptions,
    cpus: str,
    on_phase: Callable[[str], None],
) -> LoadResult:
    """Run the scale-mix sender (this module as a program, pinned to `cpus`) like the Go generator:
    phases on stderr, a LoadResult document on stdout."""
    argv = ["taskset", "-c", cpus, sys.executable, "-m", "bench.ingest.sender"]
    argv += [f"--addr={options.addr}", f"--keys={keys_file}", f"--dir={directory}"]
    argv += [f"--rate={options.rate}", f"--concurrency={options.concurrency}"]
    argv += [f"--conns={options.conns}", f"--duration={options.duration_s}"]
    argv += [f"--warmup={options.warmup_s}"]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO
    )
    assert process.stderr is not None
    assert process.stdout is not None
    other: list[str] = []
    try:
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith("phase "):
                on_phase(line.removeprefix("phase "))
            else:
                other.append(line)
        stdout = process.stdout.read()
        process.wait(timeout=60)
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"the scale-mix sender failed: {' '.join(other)[-2000:]}")
    return LoadResult.from_json(json.loads(stdout))


def _latency_summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return dict.fromkeys(("p50", "p90", "p99", "max", "mean"))
    ordered = sorted(values)
    last = len(ordered) - 1
    return {
        "p50": ordered[last // 2] * 1e3,
        "p90": ordered[round(last * 0.9)] * 1e3,
        "p99": ordered[round(last * 0.99)] * 1e3,
        "max": ordered[-1] * 1e3,
        "mean": statistics.fmean(ordered) * 1e3,
    }


async def _send_scale_mix(args: argparse.Namespace) -> dict[str, Any]:
    """The sender: agents of the scale benchmark's mix (10 per tenant, every other one a data
    agent), each request rendered by the real instruments' template and sent gzip."""
    import grpc

    from bench.simagents import AGENTS_PER_TENANT, CONNECTORS_PER_TENANT, EXPORT_PATH, templates

    keys = [line.split()[-1] for line in Path(args.keys).read_text().splitlines() if line]
    args.dir.mkdir(parents=True, exist_ok=True)
    kinds = templates(args.dir)
    now = time.time_ns()
    bodies: list[tuple[bytes, int, tuple[tuple[str, str], ...]]] = []
    for index in range(len(keys) * AGENTS_PER_TENANT):
        kind = "connector" if index % AGENTS_PER_TENANT < CONNECTORS_PER_TENANT else "etl"
        template = kinds[kind]
        started = now - random.randint(60, 3600) * 1_000_000_000
        body = template.render(f"scale-{index}", started, now, 1.0 + index % 7)
        auth = (("authorization", f"Bearer {keys[index // AGENTS_PER_TENANT]}"),)
        bodies.append((body, template.data_points, auth))
    random.Random(7).shuffle(bodies)
    channels = [
        grpc.aio.insecure_channel(args.addr, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.conns)
    ]
    calls = [c.unary_unary(EXPORT_PATH, None, None) for c in channels]
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    lags: list[float] = []
    counted = {"requests": 0, "points": 0, "bytes": 0}
    measuring = False
    cursor = 0

    async def send(scheduled: float) -> None:
        nonlocal cursor
        body, points, auth = bodies[cursor % len(bodies)]
        call = calls[cursor % len(calls)]
        cursor += 1
        lag = time.monotonic() - scheduled
        status = "OK"
        try:
            await call(body, metadata=auth, timeout=10, compression=grpc.Compression.Gzip)
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        if measuring:
            latencies.append(time.monotonic() - scheduled)
            lags.append(lag)
            statuses[status] = statuses.get(status, 0) + 1
            counted["requests"] += 1
            counted["bytes"] += len(body)
            if status == "OK":
                counted["points"] += points

    stop_at = time.monotonic() + args.warmup + args.duration
    unsent = 0
    cpu_started = 0.0

    def begin() -> None:
        nonlocal measuring, cpu_started
        measuring = True
        cpu_started = time.process_time()
        print("phase measure", file=sys.stderr, flush=True)

    loop = asyncio.get_running_loop()
    loop.call_later(args.warmup, begin)
    if args.rate:
        in_flight: set[asyncio.Task[None]] = set()
        due = time.monotonic()
        while due < stop_at:
            due += random.expovariate(args.rate)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if len(in_flight) >= args.concurrency:
                unsent += measuring
                continue
            task = loop.create_task(send(due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        measuring = False
    else:

        async def worker() -> None:
            while time.monotonic() < stop_at:
                await send(time.monotonic())

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        measuring = False
    cpu = time.process_time() - cpu_started
    print("phase done", file=sys.stderr, flush=True)
    for channel in channels:
        await channel.close(None)
    ok = statuses.get("OK", 0)
    seconds = args.duration
    return {
        "requests": counted["requests"],
        "ok": ok,
        "statuses": statuses,
        "requests_per_s": counted["requests"] / seconds,
        "ok_per_s": ok / seconds,
        "points_per_s": counted["points"] / seconds,
        "latency_ms": _latency_summary(latencies),
        "lag_ms": _latency_summary(lags),
        "completed_per_s": counted["requests"] / seconds,
        "cpu_s": cpu,
        "duration_s": seconds,
        "bytes_per_request": counted["bytes"] / max(1, counted["requests"]),
        "retries": 0,
        "unsent": unsent,
        "errors": [],
    }


def scale_sender_main(argv: list[str]) -> int:
    """Send the scale mix, print a LoadResult document."""
    parser = argparse.ArgumentParser(prog="python -m bench.ingest.sender")
    parser.add_argument("--addr", required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_send_scale_mix(args))))
    return 0


if __name__ == "__main__":
    sys.exit(scale_sender_main(sys.argv[1:]))
