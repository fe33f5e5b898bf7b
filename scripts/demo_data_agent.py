"""A demo data agent: runs real Prefect flows and counts them with otel_agents.prefect.

Some runs fail, some tasks retry, one flow runs subflows, one is async. Configured like
any agent, through the environment (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_AGENTS_API_KEY,
OTEL_METRIC_EXPORT_INTERVAL, OTEL_SERVICE_NAME), plus PREFECT_API_URL: a real Prefect
server (stack/prefect_server.py starts one). Run with `python -m scripts.demo_data_agent`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
import threading

from prefect import flow, task

from otel_agents import setup_metrics
from otel_agents.prefect import instrument

VERSION = "demo-1.0"
_rng = random.Random()


@task(retries=2, retry_delay_seconds=0.2)
def extract(source: str) -> list[int]:
    """Read a batch; the source is flaky (retried)."""
    if _rng.random() < 0.3:
        raise ConnectionError(f"{source} timed out")
    return [_rng.randint(1, 100) for _ in range(_rng.randint(5, 20))]


@task
def transform(row: int) -> int:
    """Clean one value."""
    return row * 2


@task
def load(rows: list[int]) -> int:
    """Write the batch; the warehouse is sometimes down (the flow fails)."""
    if _rng.random() < 0.1:
        raise RuntimeError("warehouse unavailable")
    return len(rows)


@flow
def sync_orders(source: str = "orders-db") -> int:
    """Extract, transform each row concurrently, load."""
    rows = extract(source)
    return load([future.result() for future in transform.map(rows)])


@flow
def compact_partition(day: int) -> int:
    """A subflow per partition."""
    return len(extract(f"partition-{day}"))


@flow
def nightly_compaction(days: int = 3) -> int:
    """Runs one subflow per day."""
    return sum(compact_partition(day) for day in range(days))


@task
async def fetch_rate(currency: str) -> float:
    """One async API call."""
    await asyncio.sleep(_rng.uniform(0.01, 0.1))
    return _rng.uniform(0.5, 1.5)


@flow
async def refresh_rates() -> float:
    """Async flow with concurrent async tasks."""
    rates = await asyncio.gather(*(fetch_rate(c) for c in ("EUR", "GBP", "JPY", "CHF")))
    return sum(rates)


def run_once() -> None:
    """One round: each flow once; failures are expected, counted and otherwise ignored."""
    sync_orders(return_state=True)
    if _rng.random() < 0.3:
        nightly_compaction(_rng.randint(1, 3), return_state=True)
    asyncio.run(_refresh_rates())


async def _refresh_rates() -> None:
    await refresh_rates(return_state=True)


def main() -> None:
    """Run rounds until SIGTERM or SIGINT; the current round finishes first."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not os.environ.get("PREFECT_API_URL"):
        sys.exit("set PREFECT_API_URL to a Prefect server (stack/prefect_server.py starts one)")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    telemetry = setup_metrics("demo-data-agent", "etl", service_version=VERSION)
    instrument(telemetry, version=VERSION, children=False, probe_interval_s=5.0)

    # Flows run in a worker thread: Prefect replaces SIGTERM's handler only while a flow
    # runs in the main thread, so the signal would crash the run instead of ending the loop.
    def loop() -> None:
        while not stop.is_set():
            run_once()
            stop.wait(_rng.uniform(0.5, 2.0))

    worker = threading.Thread(target=loop, name="data-agent")
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
    telemetry.shutdown(timeout_s=5)


if __name__ == "__main__":
    main()
