"""The gateway's parts, wired once from the settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.metrics import Observation

from gateway import instruments
from gateway.auth import Authenticator
from gateway.chain import BodyPace, Chain
from gateway.fleet import FleetTracker, create_fleet
from gateway.forwarder import Collectors
from gateway.inflight import InFlight
from gateway.ingest import Forwarder, Ingestor
from gateway.limits import Limits, TenantLimits
from gateway.namespace import MetricNamespace
from gateway.settings import GatewaySettings
from gateway.state import MemoryState, StateStore, create_state
from gateway.telemetry import GatewayTelemetry
from gateway.tenants import TenantRegistry
from gateway.watch import FileWatcher


class Collector(Forwarder, Protocol):
    """The Collector as the gateway sees it: where requests go, whether it answers."""

    async def is_ready(self, timeout_seconds: float = 1.0) -> bool:
        """True when it answers (an empty export) within the timeout."""
        ...

    async def close(self) -> None:
        """Let go of the connection."""
        ...


@dataclass
class Gateway:
    """Everything a transport adapter and the server need, built by `create`."""

    settings: GatewaySettings
    tenants: TenantRegistry
    authenticator: Authenticator
    forwarder: Collector
    telemetry: GatewayTelemetry
    ingestor: Ingestor
    in_flight: InFlight
    """The bound on requests being handled, counted on the in-flight gauge."""
    fleet: FleetTracker
    """The agents' last-seen table: told of every request that passed its limits."""
    chain: Chain
    """The one request chain every transport runs."""
    watcher: FileWatcher
    """Re-reads the tenants, limits and JWT key files when they change."""
    state: StateStore = field(default_factory=MemoryState)
    """Where the fleet, rate budgets, series counts and throttle are shared (gateway.state)."""

    @classmethod
    def create(cls, settings: GatewaySettings, forwarder: Collector | None = None) -> Gateway:
        """Build the gateway's parts (no sockets are opened yet). `forwarder`
        replaces the Collector (tests, benchmarks of the request path)."""
        telemetry = GatewayTelemetry.create()
        provider = telemetry.provider
        in_flight = InFlight(
            settings.max_in_flight_requests,
            settings.max_in_flight_bytes,
            settings.in_flight_tenant_share,
        )
        if forwarder is None:
            collector = Collectors.connect(
                settings.collector_endpoints,
                settings.forward_timeout_seconds,
                max_message_bytes=settings.max_request_bytes * 2,
                linger_seconds=settings.forward_linger_seconds,
            )
            exports = instruments.COLLECTOR_EXPORTS
            exports.observe(
                provider.get_meter(exports.scope), lambda _: [Observation(collector.exports)]
            )
            forwarder = collector
        limits = Limits(
            TenantLimits.of(settings),
            settings.limits_file,
            reload_seconds=settings.limits_reload_seconds,
            series_window_seconds=settings.active_series_window_seconds,
            max_request_bytes_cap=2 * settings.max_request_bytes,
        )
        namespace = MetricNamespace(
            settings.metric_name_table_size, settings.metric_name_idle_seconds
        )
        ingestor = Ingestor(
            forwarder,
            telemetry.metrics,
            settings.max_request_bytes,
            limits=limits,
            namespace=namespace,
        )
        series = instruments.ACTIVE_SERIES
        series.observe(provider.get_meter(series.scope), ingestor.observe_active_series)
        gauge = instruments.REQUESTS_IN_FLIGHT
        gauge.observe(provider.get_meter(gauge.scope), in_flight.observe)
        fleet = create_fleet(settings, provider.get_meter(instruments.FLEET_AGENTS.scope))
        ingestor.observers.append(fleet)
        tenants = TenantRegistry(settings.tenants_file, settings.tenants_reload_seconds)
        # API keys, admin keys, JWTs, client certificates, failed-authentication throttling.
        authenticator = Authenticator.create(settings, tenants)
        watcher = FileWatcher()
        watcher.watch(tenants.file)
        if limits.file is not None:
            watcher.watch(limits.file)
        if authenticator.jwt is not None:
            watcher.watch(authenticator.jwt.file)
        pace = BodyPace(settings.body_timeout_seconds, settings.body_min_bytes_per_second)
        chain = Chain(authenticator, in_flight, ingestor, telemetry.metrics, pace)
        state = create_state(
            settings,
            fleet,
            ingestor,
            authenticator.throttle,
            provider.get_meter(instruments.STATE_STORE_UP.scope),
        )
        return cls(
            settings,
            tenants,
            authenticator,
            forwarder,
            telemetry,
            ingestor,
            in_flight,
            fleet,
            chain,
            watcher,
            state,
        )
