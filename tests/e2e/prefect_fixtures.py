"""For the Prefect end-to-end tests: a real server, an OTLP receiver, the plugin's entry point.

The plugin is found through its `prefect.plugins` entry point. So that these tests do
not depend on how the package was installed, they put a minimal distribution
(METADATA + entry_points.txt) on the PYTHONPATH of the processes they start.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as service_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

Series = tuple[str, frozenset[tuple[str, str]]]
"""(service.instance.id, data point attributes)."""


def plugin_distribution(directory: Path) -> Path:
    """A directory to put on PYTHONPATH that registers the plugin's entry point."""
    info = directory / "otel_agents_prefect_plugin-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: otel-agents-prefect-plugin\nVersion: 0.0.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[prefect.plugins]\notel_agents = otel_agents.prefect.plugin\n"
    )
    return directory


class OtlpReceiver(service_grpc.MetricsServiceServicer):
    """Keeps every export; answers success."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: list[ExportMetricsServiceRequest] = []

    def Export(
        self, request: ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> ExportMetricsServiceResponse:
        with self._lock:
            self.requests.append(request)
        return ExportMetricsServiceResponse()

    def latest(self, name: str) -> dict[Series, float]:
        """The last value of each series of sum `name` (cumulative: the current total)."""
        result: dict[Series, float] = {}
        with self._lock:
            requests = list(self.requests)
        for request in requests:
            for resource in request.resource_metrics:
                attributes = {kv.key: kv.value.string_value for kv in resource.resource.attributes}
                instance = attributes.get("service.instance.id", "")
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        if metric.name != name:
                            continue
                        for point in metric.sum.data_points:
                            labels = frozenset(
                                (kv.key, kv.value.string_value) for kv in point.attributes
                            )
                            result[(instance, labels)] = point.as_int or point.as_double
        return result

    def instances(self) -> set[str]:
        """Every service.instance.id that exported."""
        with self._lock:
            requests = list(self.requests)
        return {
            kv.value.string_value
            for request in requests
            for resource in request.resource_metrics
            for kv in resource.resource.attributes
            if kv.key == "service.instance.id"
        }


@contextmanager
def otlp_receiver() -> Iterator[tuple[OtlpReceiver, str]]:
    """An OTLP/gRPC metrics receiver on a free port; yields it and its endpoint."""
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
    service_grpc.add_MetricsServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        server.stop(None)
