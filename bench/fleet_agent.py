"""One agent of the fleet scenarios (bench/fleet_scenarios.py), as a process of its own.

    python -m bench.fleet_agent connector|data-agent|cron|otel-client

Configured like any agent: OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_AGENTS_API_KEY,
OTEL_METRIC_EXPORT_INTERVAL, OTEL_SERVICE_NAME; the data agent and the cron script
also take PREFECT_API_URL. Once set up it prints one JSON line,
{"instance": <service.instance.id>, "pid": <pid>}, then:

- connector: counts a batch of 100 records every 0.5 s, connected to its upstream
  (only the first FLEET_AGENT_BATCHES batches when that is set: a known total; or
  until the file FLEET_AGENT_STOP_FILE exists, then prints {"records": <its total>});
- data-agent: runs flow `healthy-flow` and flow `flaky-flow` every few seconds;
  `flaky-flow` fails while the file FLEET_AGENT_FAIL_FILE exists;
- cron: runs `healthy-flow` once and exits, as a cron job's script does;
- otel-client: the plain OpenTelemetry SDK, no otel_agents (as a JavaScript or Go
  client would be): no agent type, counts a request every 0.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

FAIL_FILE_ENV = "FLEET_AGENT_FAIL_FILE"
BATCHES_ENV = "FLEET_AGENT_BATCHES"
STOP_FILE_ENV = "FLEET_AGENT_STOP_FILE"
FLOW_PERIOD_S = 3.0


def _announce(instance: str) -> None:
    print(json.dumps({"instance": instance, "pid": os.getpid()}), flush=True)


def connector(service: str) -> None:
    """A connector that counts a batch every 0.5 s."""
    from otel_agents import connector_metrics, setup_metrics

    telemetry = setup_metrics(service, "connector", service_version="1.0")
    counters = connector_metrics(telemetry, version="1.0")
    counters.set_connected(True)
    _announce(telemetry.instance_id or "")
    batches = int(os.environ.get(BATCHES_ENV, "0")) or None
    stop_file = Path(os.environ.get(STOP_FILE_ENV, "/nonexistent/fleet-agent-stop"))
    records, stopped = 0, False
    while True:
        if not stopped and stop_file.exists():
            # Its total is final; it goes on exporting it.
            print(json.dumps({"records": records}), flush=True)
            stopped = True
        if not stopped and (batches is None or batches > 0):
            counters.record_batch(100, 6_400)
            records += 100
            batches = None if batches is None else batches - 1
        time.sleep(0.5)


def _flows() -> tuple[object, object]:
    from prefect import flow

    fail_file = Path(os.environ.get(FAIL_FILE_ENV, "/nonexistent/fleet-agent-fail"))

    @flow(name="healthy-flow")
    async def healthy() -> int:
        return 1

    @flow(name="flaky-flow")
    async def flaky() -> int:
        if fail_file.exists():
            raise RuntimeError("flaky-flow fails on purpose (the fail file exists)")
        return 1

    return healthy, flaky


def _instrumented(service: str) -> None:
    from otel_agents import setup_metrics
    from otel_agents.prefect import instrument

    telemetry = setup_metrics(service, "etl", service_version="1.0")
    instrument(telemetry, service_name=service, version="1.0")
    _announce(telemetry.instance_id or "")


def data_agent(service: str) -> None:
    """A long-running data agent: a healthy and a flaky flow every few seconds."""
    _instrumented(service)
    healthy, flaky = _flows()
    while True:
        for run in (healthy, flaky):
            # A failed run is counted; the agent goes on.
            with contextlib.suppress(RuntimeError):
                asyncio.run(run())  # type: ignore[operator]
        time.sleep(FLOW_PERIOD_S)


def cron(service: str) -> None:
    """A cron job's flow script: one flow run, then a normal exit."""
    _instrumented(service)
    healthy, _ = _flows()
    asyncio.run(healthy())  # type: ignore[operator]


def otel_client(service: str) -> None:
    """The plain OpenTelemetry SDK: no agent.type, a random instance id."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    instance = str(uuid.uuid4())
    exporter = OTLPMetricExporter(
        endpoint=os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"],
        insecure=True,
        headers=(("authorization", f"Bearer {os.environ['OTEL_AGENTS_API_KEY']}"),),
    )
    reader = PeriodicExportingMetricReader(
        exporter,
        export_interval_millis=float(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "5000")),
    )
    resource = Resource.create({"service.name": service, "service.instance.id": instance})
    provider = MeterProvider(metric_readers=[reader], resource=resource)
    requests = provider.get_meter("client").create_counter("client.requests")
    _announce(instance)
    while True:
        requests.add(1)
        time.sleep(0.5)


MODES = {
    "connector": connector,
    "data-agent": data_agent,
    "cron": cron,
    "otel-client": otel_client,
}


def main(argv: list[str]) -> int:
    """Run the agent of mode argv[0]; its service name is OTEL_SERVICE_NAME."""
    if len(argv) != 1 or argv[0] not in MODES:
        print(f"usage: python -m bench.fleet_agent {'|'.join(MODES)}", file=sys.stderr)
        return 2
    MODES[argv[0]](os.environ["OTEL_SERVICE_NAME"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
