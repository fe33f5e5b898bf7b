"""The gateway's configuration, read once at start-up from GATEWAY_* variables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self

import pydantic
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.limits import LimitValues


class GatewaySettings(BaseSettings, LimitValues):
    """Every setting of the gateway; each field is the variable GATEWAY_<FIELD>.

    The per-tenant limits come from `LimitValues` (gateway/limits.py), declared there once.
    """

    # `none` unsets an optional setting (GATEWAY_METRICS_PORT=none).
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", frozen=True, extra="ignore", env_parse_none_str="none"
    )

    grpc_host: str = Field("0.0.0.0", description="Address the OTLP/gRPC server binds to.")
    grpc_port: int = Field(4317, ge=0, le=65535, description="OTLP/gRPC port (0 picks a free one).")
    http_host: str = Field("0.0.0.0", description="Address the HTTP server binds to.")
    http_port: int = Field(4318, ge=0, le=65535, description="HTTP port (health, metrics).")
    metrics_host: str = Field(
        "127.0.0.1", description="Address the /metrics port binds to (with metrics_port)."
    )
    metrics_port: int | None = Field(
        9464,
        ge=0,
        le=65535,
        description="The port of /metrics, plain HTTP (0 picks a free one); `none`: served on "
        "the HTTP port instead, where agents reach it.",
    )
    metrics_token_file: Path | None = Field(
        None, description="File of the bearer token a scrape of /metrics must send."
    )
    tenants_file: Path = Field(
        Path("config/tenants.json"),
        description="JSON file of tenants and their key hashes (see `otel-gateway tenants`).",
    )
    tenants_reload_seconds: float = Field(
        2.0, gt=0, description="How often the tenants file is checked for changes."
    )
    collector_endpoint: str = Field(
        "127.0.0.1:14317",
        description=(
            "host:port of the Collector's OTLP/gRPC receiver; several, comma-separated, "
            "share the agents between them (docs/scaling.md)."
        ),
    )
    fleet_series_interval_seconds: float = Field(
        10.0,
        gt=0,
        description="How often each agent's last-seen series are sent to its Collector.",
    )
    forward_timeout_seconds: float = Field(
        5.0, gt=0, description="Deadline of one forward to the Collector."
    )
    forward_linger_seconds: float = Field(
        0.003,
        ge=0,
        description="Longest a request waits for others to share its export to the Collector.",
    )
    max_in_flight_requests: int = Field(
        256, ge=1, description="Requests handled at once; more are refused, retryable."
    )
    max_in_flight_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="Request bytes (uncompressed) handled at once; more are refused, retryable.",
    )
    # Isolation: what one tenant, one address or one slow caller may hold.
    in_flight_tenant_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of max_in_flight_requests and max_in_flight_bytes one tenant may hold.",
    )
    body_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time a request body (HTTP) or message (gRPC) gets, plus its bytes at "
        "body_min_bytes_per_second; a slower one is refused, retryable.",
    )
    body_min_bytes_per_second: int = Field(
        128 * 1024,
        gt=0,
        description="Slowest upload rate allowed past body_timeout_seconds.",
    )
    max_grpc_calls_per_peer: int = Field(
        64,
        ge=0,
        description="gRPC calls in progress of one tenant from one client address (0 = no cap).",
    )
    max_http_connections_per_peer: int = Field(
        64, ge=0, description="HTTP connections open from one client address (0 = no cap)."
    )
    http_header_timeout_seconds: float = Field(
        10.0, gt=0, description="Time a new HTTP connection gets to send its request's headers."
    )
    grpc_reuse_port: bool = Field(
        False,
        description="Let several gateway processes bind the same gRPC port (SO_REUSEPORT).",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Gateway processes on this host sharing the gRPC and HTTP ports "
        "(SO_REUSEPORT) under one parent; more than 1 needs GATEWAY_STATE_URL.",
    )
    log_level: str = Field("INFO", description="Python logging level.")

    # JWT bearer tokens, TLS and mTLS, failed-authentication throttling.
    require_known_tenant: bool = Field(
        True,
        description="A tenant named by a JWT or a client certificate must be in the tenants file.",
    )
    jwt_secret_file: Path | None = Field(None, description="HS256 secret file: enables JWTs.")
    jwt_public_key_file: Path | None = Field(
        None, description="PEM public key (RSA: RS256, EC P-256: ES256): enables JWTs."
    )
    jwt_jwks_file: Path | None = Field(
        None, description="JSON Web Key Set file (RS256/ES256 keys by kid): enables JWTs."
    )
    jwt_audience: str = Field("otel-gateway", min_length=1, description="Required JWT `aud`.")
    jwt_issuer: str | None = Field(None, description="Required JWT `iss` (unchecked if unset).")
    jwt_tenant_claim: str = Field("tenant_id", min_length=1, description="Claim naming the tenant.")
    jwt_leeway_seconds: float = Field(
        30.0, ge=0, le=300, description="Clock skew allowed on exp, nbf and iat."
    )
    jwt_max_lifetime_seconds: float = Field(
        86400.0,
        gt=0,
        description="Longest a JWT may live: exp - iat (exp - now without iat); longer is refused.",
    )
    tls_cert_file: Path | None = Field(None, description="PEM server certificate: enables TLS.")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: clients must present a certificate it signed (mTLS)."
    )
    tls_client_tenant: Literal["none", "common_name", "uri"] = Field(
        "none", description="Take the tenant from the client certificate's CN or a SAN URI."
    )
    tls_client_uri_prefix: str = Field(
        "", description="With tls_client_tenant=uri: the SAN URI prefix before the tenant name."
    )
    auth_failure_limit: int = Field(
        20, ge=0, description="Failed authentications from one address before it is blocked."
    )
    auth_failure_window_seconds: float = Field(
        60.0, gt=0, description="Window in which auth_failure_limit failures are counted."
    )
    auth_block_seconds: float = Field(
        60.0, gt=0, description="How long a blocked address is refused without checking."
    )

    # Each tenant's limits (docs/gateway.md, "Limits") are the fields of
    # LimitValues, inherited: GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND, ... are
    # the defaults; the limits file may change them for all tenants or for one.
    limits_file: Path | None = Field(
        None, description="YAML or JSON file: `defaults:` and `tenants: {name: {...}}` limits."
    )
    limits_reload_seconds: float = Field(
        2.0, gt=0, description="How often the limits file is checked for changes."
    )
    active_series_window_seconds: float = Field(
        600.0, gt=0, description="A series not seen for this long stops counting as active."
    )
    # The metric names in use, shared by all tenants (docs/gateway.md, "One namespace").
    metric_name_table_size: int = Field(
        50_000,
        ge=1,
        description="Metric names whose type and unit the gateway remembers, all tenants "
        "together; past it the least recently used is forgotten.",
    )
    metric_name_idle_seconds: float = Field(
        600.0,
        gt=0,
        description="A metric name unused for this long is forgotten (keep it longer than "
        "the Collector's metric_expiration).",
    )

    # Fleet status (docs/gateway.md, "Fleet status")
    fleet_state_file: Path | None = Field(
        None,
        description="Where the last-seen table is kept across restarts "
        "(default: fleet-state.json beside the tenants file).",
    )
    fleet_save_seconds: float = Field(
        30.0, gt=0, description="Most often the fleet state file is rewritten."
    )
    fleet_silent_after_seconds: float = Field(
        120.0, gt=0, description="An agent not heard from for this long is 'silent'."
    )
    fleet_forget_after_seconds: float = Field(
        7 * 86400.0, gt=0, description="An agent not heard from for this long is forgotten."
    )
    fleet_retire_after_seconds: float = Field(
        86400.0,
        gt=0,
        description="An agent stopped (or retired) for this long leaves the table: a pod "
        "replaced in a rolling deploy keeps no row.",
    )
    fleet_max_agents_per_tenant: int = Field(
        1000, ge=1, description="Agents remembered per tenant (least recently seen go first)."
    )
    fleet_max_resource_attributes: int = Field(
        32,
        ge=8,
        description="Resource attributes the fleet keeps per agent and sends with its "
        "last-seen series (service.*, host.name, agent.type first; the rest in order).",
    )
    fleet_max_resource_bytes: int = Field(
        4096,
        ge=1024,
        description="Bytes of resource attribute keys and values the fleet keeps per agent.",
    )
    # The state store (docs/gateway.md, "The state store")
    state_url: str = Field(
        "",
        description="redis:// or rediss:// URL (password in it) of the store the replicas "
        "and workers share: fleet, rate budgets, series counts, authentication throttle. "
        "Empty: all state in this process.",
    )
    state_replica_name: str = Field(
        "",
        max_length=200,
        description="This process's name among those sharing the state store (default: "
        "host:pid:random; `--workers` names each worker host:grpc-port/index, so that a "
        "restarted worker takes its predecessor's place).",
    )
    state_sync_seconds: float = Field(
        1.0,
        gt=0,
        le=30,
        description="How often the shared state is exchanged with the store (fleet rows, "
        "rate leases, series counts, throttle).",
    )
    state_timeout_seconds: float = Field(
        1.0, gt=0, le=30, description="A store call slower than this counts as the store down."
    )
    admin_key_sha256: str = Field(
        "",
        description="Hex SHA-256 digests of admin keys, comma-separated: they list every "
        "tenant on /api/fleet and /status.",
    )

    @pydantic.field_validator("state_url")
    @classmethod
    def _check_state_url(cls, value: str) -> str:
        """A Redis URL, or empty (the state in memory)."""
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "GATEWAY_STATE_URL takes redis://[:password@]host:port/db, rediss://... (TLS) "
                "or unix:///path/redis.sock; empty keeps the state in this process"
            )
        return value

    @pydantic.field_validator("admin_key_sha256")
    @classmethod
    def _check_admin_digests(cls, value: str) -> str:
        """Each digest is 64 hex digits: never the key itself."""
        for digest in value.split(","):
            if digest.strip() and not re.fullmatch(r"[0-9a-fA-F]{64}", digest.strip()):
                raise ValueError(
                    "GATEWAY_ADMIN_KEY_SHA256 takes hex SHA-256 digests of admin keys, "
                    'comma-separated (printf %s "$KEY" | sha256sum), not the keys'
                )
        return value

    @property
    def admin_key_digests(self) -> tuple[str, ...]:
        """The admin keys' digests, lower-case."""
        return tuple(d.strip().lower() for d in self.admin_key_sha256.split(",") if d.strip())

    @property
    def collector_endpoints(self) -> tuple[str, ...]:
        """The Collectors' addresses, in the order given."""
        return tuple(e.strip() for e in self.collector_endpoint.split(",") if e.strip())

    @property
    def fleet_state_path(self) -> Path:
        """The fleet state file in force."""
        return self.fleet_state_file or self.tenants_file.with_name("fleet-state.json")

    @model_validator(mode="after")
    def _check_credentials(self) -> Self:
        """Settings that only make sense together."""
        jwt_sources = [self.jwt_secret_file, self.jwt_public_key_file, self.jwt_jwks_file]
        if sum(source is not None for source in jwt_sources) > 1:
            raise ValueError(
                "set only one of GATEWAY_JWT_SECRET_FILE, GATEWAY_JWT_PUBLIC_KEY_FILE "
                "and GATEWAY_JWT_JWKS_FILE"
            )
        endpoints = self.collector_endpoints
        if not endpoints or len(set(endpoints)) != len(endpoints):
            raise ValueError(
                "GATEWAY_COLLECTOR_ENDPOINT takes host:port of each Collector, comma-separated, "
                f"each once; got {self.collector_endpoint!r}"
            )
        if self.metrics_port and self.metrics_port in (self.http_port, self.grpc_port):
            raise ValueError(
                f"GATEWAY_METRICS_PORT {self.metrics_port} is the HTTP or gRPC port: give "
                "/metrics a port of its own, or set it to `none` (served on the HTTP port)"
            )
        if self.workers > 1 and not self.state_url:
            raise ValueError(
                f"GATEWAY_WORKERS={self.workers} needs GATEWAY_STATE_URL (redis://host:port/0): "
                "the workers must share the fleet, rate limits and series counts; "
                "or set GATEWAY_WORKERS=1"
            )
        if self.workers > 1 and 0 in (self.grpc_port, self.http_port):
            raise ValueError(
                "GATEWAY_WORKERS > 1 needs fixed GATEWAY_GRPC_PORT and GATEWAY_HTTP_PORT "
                "(the workers share them), not 0"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE, or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("GATEWAY_TLS_CLIENT_CA_FILE needs GATEWAY_TLS_CERT_FILE (TLS)")
        if self.tls_client_tenant != "none" and self.tls_client_ca_file is None:
            raise ValueError("GATEWAY_TLS_CLIENT_TENANT needs GATEWAY_TLS_CLIENT_CA_FILE (mTLS)")
        if self.tls_client_tenant == "uri" and not self.tls_client_uri_prefix:
            raise ValueError(
                "GATEWAY_TLS_CLIENT_TENANT=uri needs GATEWAY_TLS_CLIENT_URI_PREFIX, "
                "e.g. spiffe://example.org/tenant/"
            )
        return self
