"""The gateway's configuration, read once at start-up from GATEWAY_* variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """Every setting of the gateway; each field is the variable GATEWAY_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", frozen=True, extra="ignore")

    grpc_host: str = Field("0.0.0.0", description="Address the OTLP/gRPC server binds to.")
    grpc_port: int = Field(4317, ge=0, le=65535, description="OTLP/gRPC port (0 picks a free one).")
    http_host: str = Field("0.0.0.0", description="Address the HTTP server binds to.")
    http_port: int = Field(4318, ge=0, le=65535, description="HTTP port (health, metrics).")
    tenants_file: Path = Field(
        Path("config/tenants.json"),
        description="JSON file of tenants and their key hashes (see `otel-gateway tenants`).",
    )
    tenants_reload_seconds: float = Field(
        2.0, gt=0, description="How often the tenants file is checked for changes."
    )
    collector_endpoint: str = Field(
        "127.0.0.1:14317", description="host:port of the Collector's OTLP/gRPC receiver."
    )
    forward_timeout_seconds: float = Field(
        5.0, gt=0, description="Deadline of one forward to the Collector."
    )
    max_request_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="Largest accepted OTLP request (bytes, uncompressed)."
    )
    log_level: str = Field("INFO", description="Python logging level.")
