"""A demo Data Connector: sends record batches and counts them with otel_agents.

Configured like any agent, through the environment (OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_AGENTS_API_KEY, OTEL_METRIC_EXPORT_INTERVAL, OTEL_SERVICE_NAME).
"""

from __future__ import annotations

import os
import random
import signal
import threading

from otel_agents import connector_metrics, setup_metrics


def main() -> None:
    """Send a batch every 0.2-1 s until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    telemetry = setup_metrics(os.environ.get("OTEL_SERVICE_NAME", "demo-connector"), "connector")
    counters = connector_metrics(telemetry)
    rng = random.Random()
    while not stop.wait(rng.uniform(0.2, 1.0)):
        rows = rng.randint(100, 5_000)
        counters.record_batch(rows, rows * rng.randint(40, 200))
    telemetry.shutdown(timeout_s=5)


if __name__ == "__main__":
    main()
