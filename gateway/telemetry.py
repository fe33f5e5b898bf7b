"""The gateway's own metrics, served on /metrics in the Prometheus text format."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation
from opentelemetry.sdk.metrics import (
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, ProcessCollector

from gateway import instruments
from gateway.instruments import Instrument

# Forwarding to a local Collector takes about a millisecond; the tail reaches
# the forward deadline (5 s by default).
MAX_LABEL_SETS = 1_000_000
FORWARD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Tally:
    """Sums per attribute set, kept in a dict and read when /metrics is scraped.

    The request path counts several things per request; the SDK's `Counter.add`
    costs ~5 µs with attributes (FACTS.md), an `add` here well under one.
    """

    def __init__(self) -> None:
        self._sums: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()

    def add(self, amount: float, attributes: Mapping[str, str] | None = None) -> None:
        """Add `amount` to the sum of `attributes` (negative amounts for up-down sums)."""
        key = tuple(attributes.items()) if attributes else ()
        with self._lock:
            self._sums[key] = self._sums.get(key, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        """Every sum: the callback of the observable instrument that exports them."""
        del options
        with self._lock:
            sums = list(self._sums.items())
        return [Observation(value, dict(key)) for key, value in sums]


@dataclass(frozen=True)
class GatewayMetrics:
    """The request path's instruments (their names: gateway.instruments)."""

    requests: Tally
    rejections: Tally
    data_points: Tally
    auth_failures: Tally
    forward_duration: Histogram

    @classmethod
    def create(cls, meter: Meter) -> GatewayMetrics:
        """Create the instruments on `meter`."""

        def counter(instrument: Instrument) -> Tally:
            tally = Tally()
            instrument.observe(meter, tally.observe)
            return tally

        return cls(
            requests=counter(instruments.REQUESTS),
            rejections=counter(instruments.REJECTIONS),
            data_points=counter(instruments.DATA_POINTS),
            auth_failures=counter(instruments.AUTH_FAILURES),
            forward_duration=meter.create_histogram(
                instruments.FORWARD_DURATION.name,
                unit=instruments.FORWARD_DURATION.unit,
                description=instruments.FORWARD_DURATION.description,
                explicit_bucket_boundaries_advisory=FORWARD_BUCKETS,
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
        # process_open_fds, process_max_fds, CPU, resident memory (gateway.openfiles).
        ProcessCollector(registry=registry)
        reader = PrometheusMetricReader(
            disable_target_info=True,
            registry=registry,
            # The SDK folds label sets past 2,000 per instrument into one
            # overflow point: the last-seen gauges have one per agent, and the
            # counters one per tenant and outcome. Their own settings bound them
            # (fleet_max_agents_per_tenant, the tenants file).
            cardinality_limits={
                ObservableGauge: MAX_LABEL_SETS,
                ObservableCounter: MAX_LABEL_SETS,
                ObservableUpDownCounter: MAX_LABEL_SETS,
            },
        )
        provider = MeterProvider(
            metric_readers=[reader],
            resource=Resource.create({"service.name": "otel-gateway"}),
            shutdown_on_exit=False,
        )
        metrics = GatewayMetrics.create(provider.get_meter(instruments.REQUESTS.scope))
        return cls(registry, provider, metrics)
