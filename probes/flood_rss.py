"""Gateway RSS during a long flood of refused tiny-chunk bodies (no key, fresh
connections one after the other): does it stay bounded?

Run: PYTHONPATH=$PWD .venv/bin/python probes/flood_rss.py [seconds] [attack of hostile.py]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import hostile  # noqa: E402

from bench import bench_isolation as bench  # noqa: E402
from bench import isolation_attacks as attacks  # noqa: E402
from gateway import tenants  # noqa: E402
from stack.local import LocalStack, collector_binary  # noqa: E402


async def flood(stack: LocalStack, gateway: object, key: str, seconds: float) -> None:
    stop = asyncio.Event()
    target = attacks.Target(
        stack.gateway_grpc_endpoint.removeprefix("http://"), stack.gateway_http_url, key
    )
    task = asyncio.create_task(getattr(hostile, ATTACK)(target, stop))
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        await asyncio.sleep(3)
        print(f"{time.monotonic() - began:5.0f} s: gateway RSS {bench.rss_mib(gateway):.0f} MiB")  # type: ignore[arg-type]
    stop.set()
    print("attack:", await task)
    await asyncio.sleep(5)
    print(f"5 s after: gateway RSS {bench.rss_mib(gateway):.0f} MiB")  # type: ignore[arg-type]


def main(seconds: float) -> None:
    run_dir = bench.REPO / ".run" / "probe-flood"
    run_dir.mkdir(parents=True, exist_ok=True)
    table, key = tenants.add_key(tenants.TenantTable(), "alpha")
    tenants.save(run_dir / "tenants.json", table)
    stack = LocalStack(run_dir, tenants_file=run_dir / "tenants.json")
    try:
        collector = stack.start_collector(collector_binary())
        stack.wait_ready(collector, timeout=60)
        gateway = stack.start_gateway()
        stack.wait_ready(gateway, timeout=60)
        print(f"start: gateway RSS {bench.rss_mib(gateway):.0f} MiB")
        asyncio.run(flood(stack, gateway, key, seconds))
    finally:
        stack.stop_all()


ATTACK = sys.argv[2] if len(sys.argv) > 2 else "tiny_chunks_stranger"

if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 30)
