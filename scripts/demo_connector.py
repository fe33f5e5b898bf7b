"""A demo Data Connector: streams Arrow record batches to the demo upstream over gRPC.

Configured like any agent, through the environment (OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_AGENTS_API_KEY, OTEL_METRIC_EXPORT_INTERVAL, OTEL_SERVICE_NAME), plus
DEMO_UPSTREAM_ADDRESS (default 127.0.0.1:50051, see scripts/demo_upstream.py) and
DEMO_CERT_FILE (the PEM certificate whose expiry it reports; default: a self-signed one,
valid 30 days, made at start in a temporary directory).

Two switches for bench/bench_connector_cpu.py: DEMO_CONNECTOR_FULL_SPEED=1 sends the
next query as soon as the last one returns (no pause), and DEMO_CONNECTOR_INSTRUMENT=0
runs the same loop with no metrics at all (no setup_metrics, no interceptor, no
connectivity watch), to measure what the instrumentation costs.

Every connector metric moves: the gRPC client interceptor counts queries, bytes,
records and errors; the channel's state drives `connector_connected`.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pyarrow as pa  # type: ignore[import-untyped]  # no stubs

from otel_agents import AgentTelemetry, connector_metrics, setup_metrics
from otel_agents.arrow import ipc_row_count
from otel_agents.grpc_instrumentation import ClientInterceptor, watch_connectivity
from scripts.demo_upstream import ADDRESS_ENV, DEFAULT_ADDRESS, PUT, UPLOAD

VERSION = "0.1.0"
CERT_ENV = "DEMO_CERT_FILE"
FULL_SPEED_ENV = "DEMO_CONNECTOR_FULL_SPEED"
INSTRUMENT_ENV = "DEMO_CONNECTOR_INSTRUMENT"
REGIONS = ("eu-west", "us-east", "ap-south")
CALL_TIMEOUT_S = 5.0

_logger = logging.getLogger("demo-connector")


def make_certificate(directory: Path, days: int = 30) -> Path:
    """A self-signed PEM certificate for `connector.demo`, expiring in `days` days."""
    from stack.pki import self_signed_file

    return self_signed_file(directory / "connector.pem", days, "connector.demo")


def record_batch(rng: random.Random) -> pa.RecordBatch:
    """A batch of 100-5000 random orders."""
    rows = rng.randint(100, 5_000)
    return pa.record_batch(
        {
            "order_id": pa.array(range(rows), pa.int64()),
            "amount": pa.array([rng.uniform(1, 500) for _ in range(rows)], pa.float64()),
            "region": pa.array([rng.choice(REGIONS) for _ in range(rows)]),
        }
    )


def ipc_payload(batch: pa.RecordBatch) -> bytes:
    """`batch` as one Arrow IPC stream: what goes over the wire."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def send_once(channel: grpc.Channel, rng: random.Random) -> str | None:
    """One query to the upstream: mostly a stream of 1-4 batches, sometimes a single one.

    Returns the status code name of a failed call, None on success. Refusals are
    expected (the demo upstream fails a few percent of calls) and the interceptor
    counts them, so they are not raised.
    """
    try:
        if rng.random() < 0.8:
            count = rng.randint(1, 4)
            # A generator: each batch is built when gRPC is ready to send it.
            batches: Iterator[bytes] = (ipc_payload(record_batch(rng)) for _ in range(count))
            channel.stream_unary(UPLOAD, None, None)(batches, timeout=CALL_TIMEOUT_S)
        else:
            payload = ipc_payload(record_batch(rng))
            channel.unary_unary(PUT, None, None)(payload, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return None


def certificate_path(directory: Path) -> Path | None:
    """DEMO_CERT_FILE, else a fresh self-signed certificate (None without cryptography)."""
    configured = os.environ.get(CERT_ENV)
    if configured:
        return Path(configured)
    try:
        return make_certificate(directory)
    except ImportError:
        _logger.warning("cryptography is not installed: no certificate, no expiry gauge")
        return None


def main() -> None:
    """Send to the upstream every 0.2-1 s (or without pause) until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    address = os.environ.get(ADDRESS_ENV, DEFAULT_ADDRESS)
    service = os.environ.get("OTEL_SERVICE_NAME", "demo-connector")
    full_speed = os.environ.get(FULL_SPEED_ENV) == "1"
    instrument = os.environ.get(INSTRUMENT_ENV) != "0"
    telemetry = (
        setup_metrics(service, "connector", service_version=VERSION)
        if instrument
        else AgentTelemetry.disabled()
    )
    with tempfile.TemporaryDirectory(prefix="demo-connector-") as directory:
        channel = grpc.insecure_channel(address)
        stop_watching: Callable[[], None] | None = None
        certificate = None
        if instrument:
            certificate = certificate_path(Path(directory))
            metrics = connector_metrics(telemetry, version=VERSION, certificate_path=certificate)
            interceptor = ClientInterceptor(metrics, records_of=ipc_row_count)
            channel = grpc.intercept_channel(channel, interceptor)
            stop_watching = watch_connectivity(channel, metrics)
        _logger.info(
            "sending Arrow batches to %s (certificate %s%s%s)",
            address,
            certificate,
            ", full speed" if full_speed else "",
            "" if instrument else ", no instrumentation",
        )
        rng = random.Random()
        last: str | None = None
        try:
            while not stop.wait(0.0 if full_speed else rng.uniform(0.2, 1.0)):
                outcome = send_once(channel, rng)
                if outcome != last:  # the metrics count every failure; the log shows changes
                    _logger.info("upstream calls %s", f"fail: {outcome}" if outcome else "succeed")
                    last = outcome
        finally:
            if stop_watching is not None:
                stop_watching()
            channel.close()
            telemetry.shutdown(timeout_s=5)


if __name__ == "__main__":
    main()
