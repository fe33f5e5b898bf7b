"""A fake OTLP/gRPC endpoint on threads, for code that runs without an event loop: the
agents' exporters, a gateway in another process (a fake Collector behind it). Tests
of the gateway in this process use gateway_fixtures.fake_collector, on their loop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as service_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

Series = tuple[str, frozenset[tuple[str, str]]]
"""(service.instance.id, data point attributes)."""


class OtlpReceiver(service_grpc.MetricsServiceServicer):
    """Keeps every export with its metadata; answers success."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: list[tuple[ExportMetricsServiceRequest, dict[str, str]]] = []

    def Export(
        self, request: ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> ExportMetricsServiceResponse:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self._lock:
            self.received.append((request, metadata))
        return ExportMetricsServiceResponse()

    @property
    def requests(self) -> list[ExportMetricsServiceRequest]:
        """Every request so far, in order."""
        with self._lock:
            return [request for request, _ in self.received]

    def latest(self, name: str) -> dict[Series, float]:
        """The last value of each series of sum `name` (cumulative: the current total)."""
        result: dict[Series, float] = {}
        for request in self.requests:
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
        requests = self.requests
        return {
            kv.value.string_value
            for request in requests
            for resource in request.resource_metrics
            for kv in resource.resource.attributes
            if kv.key == "service.instance.id"
        }


@contextmanager
def otlp_receiver() -> Iterator[tuple[OtlpReceiver, str]]:
    """An OTLP/gRPC metrics receiver on a free port; yields it and its endpoint
    (`http://127.0.0.1:<port>`)."""
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
    service_grpc.add_MetricsServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        server.stop(None)
