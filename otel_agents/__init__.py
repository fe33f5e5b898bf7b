"""Metrics for the platform's agents, exported over OTLP (gRPC or HTTP) to the tenant gateway.

Importing this package has no side effects; `setup_metrics` does the wiring.
"""

from otel_agents.config import AgentConfig, ConfigError
from otel_agents.connector import ConnectorMetrics, connector_metrics
from otel_agents.setup import setup_metrics
from otel_agents.telemetry import AgentTelemetry

__all__ = [
    "AgentConfig",
    "AgentTelemetry",
    "ConfigError",
    "ConnectorMetrics",
    "connector_metrics",
    "setup_metrics",
]
