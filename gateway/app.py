"""The gateway's parts, wired once from the settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry.metrics import Observation

from gateway.auth import Authenticator
from gateway.errors import GatewayError, Unauthenticated
from gateway.fleet import FleetTracker, create_fleet
from gateway.forwarder import CollectorForwarder
from gateway.inflight import InFlight
from gateway.ingest import Ingestor
from gateway.limits import Limits
from gateway.settings import GatewaySettings
from gateway.telemetry import GatewayTelemetry
from gateway.tenants import TenantRegistry


@dataclass
class Gateway:
    """Everything a transport adapter needs: tenants, the ingest path, telemetry."""

    settings: GatewaySettings
    tenants: TenantRegistry
    authenticator: Authenticator
    forwarder: CollectorForwarder
    telemetry: GatewayTelemetry
    ingestor: Ingestor
    # The agents' last-seen table, wired in __post_init__.
    fleet: FleetTracker = field(init=False, repr=False)
    # The bound on requests being handled, counted on the in-flight gauge.
    in_flight: InFlight = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Wire the fleet tracker (told of every accepted request, exported on /metrics)
        and the in-flight bound."""
        self.in_flight = InFlight(
            self.settings.max_in_flight_requests, self.settings.max_in_flight_bytes
        )
        self.telemetry.provider.get_meter("gateway").create_observable_up_down_counter(
            "gateway.requests.in_flight",
            [self.in_flight.observe],
            "{request}",
            "Export requests being handled.",
        )

        self.fleet = create_fleet(self.settings, self.telemetry.provider.get_meter("gateway.fleet"))
        self.ingestor.observers.append(self.fleet)

    @classmethod
    def create(cls, settings: GatewaySettings) -> Gateway:
        """Build the gateway's parts (no sockets are opened yet)."""
        telemetry = GatewayTelemetry.create()
        forwarder = CollectorForwarder(
            settings.collector_endpoint,
            settings.forward_timeout_seconds,
            max_message_bytes=settings.max_request_bytes * 2,
            linger_seconds=settings.forward_linger_seconds,
        )
        ingestor = Ingestor(forwarder, telemetry.metrics, settings.max_request_bytes)
        # Per-tenant limits (settings and limits file); active series on /metrics.
        ingestor.use_limits(Limits.from_settings(settings))
        telemetry.provider.get_meter("gateway.limits").create_observable_gauge(
            "gateway.active_series",
            callbacks=[ingestor.observe_active_series],
            unit="{series}",
            description="Series per tenant seen within the active-series window.",
        )
        telemetry.provider.get_meter("gateway.forwarder").create_observable_counter(
            "gateway.collector.exports",
            callbacks=[lambda _: [Observation(forwarder.exports)]],
            unit="{export}",
            description="Exports sent to the Collector; each carries one or more requests.",
        )
        tenants = TenantRegistry(settings.tenants_file)
        # API keys, JWTs, client certificates, failed-authentication throttling.
        authenticator = Authenticator.create(settings, tenants)
        return cls(settings, tenants, authenticator, forwarder, telemetry, ingestor)

    def count_outcome(self, transport: str, tenant_id: str, error: GatewayError | None) -> None:
        """Count one finished request (and its rejection reason, if any)."""
        metrics = self.telemetry.metrics
        outcome = "accepted" if error is None else error.reason
        metrics.requests.add(
            1, {"tenant_id": tenant_id, "transport": transport, "outcome": outcome}
        )
        if error is not None:
            metrics.rejections.add(1, {"tenant_id": tenant_id, "reason": error.reason})
        if isinstance(error, Unauthenticated):
            metrics.auth_failures.add(1, {"transport": transport, "reason": error.cause})
