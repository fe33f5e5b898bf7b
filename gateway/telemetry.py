"""The gateway's own metrics, served on /metrics in the Prometheus text format."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Counter, Histogram, Meter, UpDownCounter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

# Forwarding to a local Collector takes about a millisecond; the tail reaches
# the forward deadline (5 s by default).
FORWARD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class GatewayMetrics:
    """Instruments of the request path; each name is its Prometheus name less suffixes."""

    requests: Counter
    rejections: Counter
    data_points: Counter
    auth_failures: Counter
    forward_duration: Histogram
    in_flight: UpDownCounter

    @classmethod
    def create(cls, meter: Meter) -> GatewayMetrics:
        """Create the instruments on `meter`."""
        return cls(
            requests=meter.create_counter(
                "gateway.requests",
                unit="{request}",
                description="Export requests by tenant, transport and outcome.",
            ),
            rejections=meter.create_counter(
                "gateway.rejections",
                unit="{request}",
                description="Refused requests by tenant and reason.",
            ),
            data_points=meter.create_counter(
                "gateway.data_points",
                unit="{data_point}",
                description="Data points by tenant and outcome (forwarded, rejected).",
            ),
            auth_failures=meter.create_counter(
                "gateway.auth_failures",
                unit="{request}",
                description="Requests without a valid credential, by reason.",
            ),
            forward_duration=meter.create_histogram(
                "gateway.forward.duration",
                unit="s",
                description="Time to forward one request to the Collector.",
                explicit_bucket_boundaries_advisory=FORWARD_BUCKETS,
            ),
            in_flight=meter.create_up_down_counter(
                "gateway.requests.in_flight",
                unit="{request}",
                description="Export requests being handled.",
            ),
        )


@dataclass(frozen=True)
class GatewayTelemetry:
    """A meter provider whose metrics are read by a Prometheus registry of its own."""

    registry: CollectorRegistry
    provider: MeterProvider
    metrics: GatewayMetrics

    @classmethod
    def create(cls) -> GatewayTelemetry:
        """A fresh provider and registry (one per gateway, so tests can make several)."""
        registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(disable_target_info=True, registry=registry)
        provider = MeterProvider(
            metric_readers=[reader],
            resource=Resource.create({"service.name": "otel-gateway"}),
            shutdown_on_exit=False,
        )
        metrics = GatewayMetrics.create(provider.get_meter("gateway"))
        metrics.in_flight.add(0)  # exposed from the start, not from the first request
        return cls(registry, provider, metrics)
