"""Authenticator: bearer API keys, refusals that never echo a secret, throttling."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest
from gateway_fixtures import (
    attributes_of,
    counter_request,
    fake_collector,
    make_tenants,
    running_gateway,
)
from prometheus_client import CollectorRegistry

from gateway.auth import Authenticator, Credentials, authorization_from
from gateway.errors import Unauthenticated
from gateway.settings import GatewaySettings
from gateway.tenants import Tenant, TenantRegistry
from gateway.throttle import FailureThrottle, peer_address

PEER = "ipv4:10.1.2.3:50000"


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _authenticator(
    tmp_path: Path, throttle: FailureThrottle | None = None
) -> tuple[Authenticator, dict[str, str]]:
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")
    return Authenticator(TenantRegistry(tmp_path / "tenants.json"), throttle=throttle), keys


def _auth_failures(registry: CollectorRegistry, reason: str) -> float | None:
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "gateway_auth_failures_total" and sample.labels["reason"] == reason:
                return float(sample.value)
    return None


def _refusal(authenticator: Authenticator, credentials: Credentials) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as refused:
        authenticator.authenticate(credentials)
    return refused.value


def test_a_key_authenticates_its_tenant_whatever_the_scheme_case(tmp_path: Path) -> None:
    auth, keys = _authenticator(tmp_path)
    assert auth.authenticate(Credentials(f"Bearer {keys['acme']}")) == Tenant("acme")
    assert auth.authenticate(Credentials(f"bearer  {keys['globex']} ")) == Tenant("globex")


@pytest.mark.parametrize(
    ("authorization", "cause", "words"),
    [
        (None, "missing", "no credential"),
        ("", "missing", "no credential"),
        ("Basic dXNlcjpwdw==", "malformed", "exactly one 'Bearer"),
        ("Bearer", "malformed", "exactly one 'Bearer"),
        ("Bearer a b", "malformed", "exactly one 'Bearer"),
        ("oga_00000000_x", "malformed", "exactly one 'Bearer"),
        ("Bearer oga_00000000_not-a-real-key", "unknown", "unknown or revoked API key"),
        ("Bearer garbage", "unknown", "unknown or revoked API key"),
        ("Bearer a.b.c", "jwt_disabled", "does not accept JWTs"),
    ],
)
def test_each_refusal_has_a_cause_and_a_clear_message(
    tmp_path: Path, authorization: str | None, cause: str, words: str
) -> None:
    auth, _ = _authenticator(tmp_path)
    refused = _refusal(auth, Credentials(authorization))
    assert refused.cause == cause
    assert words in refused.message


def test_two_authorization_values_are_refused_not_picked_from(tmp_path: Path) -> None:
    auth, keys = _authenticator(tmp_path)
    cases: list[list[str | bytes]] = [
        [f"Bearer {keys['acme']}", f"Bearer {keys['globex']}"],
        [f"Bearer {keys['acme']}", b"Bearer oga_00000000_other"],
        ["Bearer oga_00000000_other", f"Bearer {keys['acme']}"],
    ]
    for values in cases:
        joined = authorization_from(values)
        refused = _refusal(auth, Credentials(joined))
        assert refused.cause == "malformed"
        for key in keys.values():
            assert key not in str(refused)
    assert authorization_from([]) is None
    assert authorization_from([b"Bearer x"]) == "Bearer x"


def test_a_refusal_never_contains_the_credential(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth, keys = _authenticator(tmp_path)
    forged = keys["acme"][:-4] + "AAAA"
    with caplog.at_level(logging.DEBUG):
        for authorization in (f"Bearer {forged}", f"Bearer {forged} x", f"Token {forged}"):
            refused = _refusal(auth, Credentials(authorization, peer=PEER))
            assert forged not in str(refused)
            assert forged.split("_", 2)[2] not in str(refused)
    assert forged not in caplog.text


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:54321", "127.0.0.1"),
        ("ipv6:[::1]:5432", "::/64"),
        ("ipv6:[2001:db8:1:2:aaaa::1]:443", "2001:db8:1:2::/64"),
        ("ipv6:[fe80::1%25eth0]:443", "fe80::/64"),
        ("ipv6:[::ffff:10.0.0.1]:80", "10.0.0.1"),
        ("10.0.0.7", "10.0.0.7"),
        ("10.0.0.7:8080", "10.0.0.7"),
        ("[2001:db8::5]:8080", "2001:db8::/64"),
        ("2001:db8::5", "2001:db8::/64"),
        ("unix:/run/gateway.sock", None),
        ("", None),
    ],
)
def test_peer_strings_are_reduced_to_an_address(peer: str, address: str | None) -> None:
    assert peer_address(peer) == address


def test_the_throttle_blocks_at_the_limit_within_the_window_and_forgets_after() -> None:
    clock = Clock()
    throttle = FailureThrottle(3, window_seconds=10, block_seconds=30, clock=clock)
    for _ in range(2):
        throttle.record_failure("10.0.0.1")
    clock.now += 11  # the window passed: counting starts again
    throttle.record_failure("10.0.0.1")
    throttle.record_failure("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 0
    throttle.record_failure("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 30
    assert throttle.retry_after("10.0.0.2") == 0
    assert throttle.retry_after(None) == 0
    clock.now += 29.5
    assert throttle.retry_after("10.0.0.1") == pytest.approx(0.5)
    clock.now += 1
    assert throttle.retry_after("10.0.0.1") == 0
    assert throttle.remembered == 0


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    clock = Clock()
    throttle = FailureThrottle(2, 60, 60, max_peers=100, clock=clock)
    throttle.record_failure("10.9.9.9")
    throttle.record_failure("10.9.9.9")
    for i in range(10_000):
        throttle.record_failure(f"10.0.{i // 256}.{i % 256}")
        if i % 50 == 0:
            assert throttle.retry_after("10.9.9.9") > 0  # still knocking: kept
    assert throttle.remembered == 100
    assert FailureThrottle(0, 60, 60).retry_after("10.9.9.9") == 0


def test_an_address_that_keeps_failing_has_its_failures_throttled_and_valid_keys_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    auth, keys = _authenticator(tmp_path, FailureThrottle(3, 60, 20, clock=clock))
    with caplog.at_level(logging.WARNING, logger="gateway.throttle"):
        for _ in range(3):
            assert _refusal(auth, Credentials("Bearer nope", peer=PEER)).cause == "unknown"
    assert "refusing 10.1.2.3 for 20 s" in caplog.text

    # Blocked: a failure from that address is throttled, a valid key from it (a
    # tenant behind the same NAT) is served, as is a neighbour.
    refused = _refusal(auth, Credentials("Bearer nope", peer="ipv4:10.1.2.3:1"))
    assert refused.cause == "throttled"
    assert refused.message == (
        "too many failed authentications from your address; retry after 20 s"
    )
    same_address = Credentials(f"Bearer {keys['acme']}", peer="ipv4:10.1.2.3:2")
    assert auth.authenticate(same_address) == Tenant("acme")
    neighbour = Credentials(f"Bearer {keys['acme']}", peer="ipv4:10.1.2.4:1")
    assert auth.authenticate(neighbour) == Tenant("acme")

    clock.now += 15.2
    assert "retry after 5 s" in _refusal(auth, Credentials("Bearer nope", peer=PEER)).message
    clock.now += 5
    assert auth.authenticate(Credentials(f"Bearer {keys['acme']}", peer=PEER)) == Tenant("acme")


def test_settings_build_the_throttle(tmp_path: Path) -> None:
    settings = GatewaySettings(
        tenants_file=tmp_path / "tenants.json",
        auth_failure_limit=2,
        auth_failure_window_seconds=5,
        auth_block_seconds=7,
    )
    auth = Authenticator.create(settings, TenantRegistry(settings.tenants_file))
    for _ in range(2):
        _refusal(auth, Credentials(None, peer=PEER))
    assert "retry after 7 s" in _refusal(auth, Credentials(None, peer=PEER)).message
    assert GatewaySettings().auth_failure_limit == 20


def test_throttled_refusals_are_counted_over_grpc(tmp_path: Path) -> None:
    make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> None:
        async with (
            fake_collector() as (_, port),
            running_gateway(tmp_path / "tenants.json", port, auth_failure_limit=2) as gw,
        ):
            codes = []
            details = ""
            for _ in range(4):
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await gw.export(counter_request().SerializeToString(), "oga_0_x")
                codes.append(failure.value.code())
                details = failure.value.details() or ""
            assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
            assert "too many failed authentications" in details
            assert _auth_failures(gw.gateway.telemetry.registry, "unknown") == 2
            assert _auth_failures(gw.gateway.telemetry.registry, "throttled") == 2

    asyncio.run(scenario())


def test_a_strangers_failures_do_not_refuse_a_valid_key_at_its_address(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> None:
        async with (
            fake_collector() as (_, port),
            running_gateway(tmp_path / "tenants.json", port, auth_failure_limit=2) as gw,
        ):
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError):
                    await gw.export(counter_request().SerializeToString(), "oga_0_x")
            await gw.export(counter_request().SerializeToString(), keys["acme"])

    asyncio.run(scenario())


def test_no_header_lets_one_tenant_write_as_another(tmp_path: Path) -> None:
    """Only the credential names the tenant: tenant headers and attributes are ignored."""
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")
    lookalike = {"tenant_id": "globex", "tenant.id": "globex", "Tenant-ID": "globex"}
    request = counter_request(
        point_attributes=lookalike, resource_attributes=lookalike, scope_attributes=lookalike
    )
    headers = (
        ("authorization", f"Bearer {keys['acme']}"),
        ("x-tenant-id", "globex"),
        ("tenant_id", "globex"),
        ("tenant-id", "globex"),
        ("x-scope-orgid", "globex"),
        ("x-tenant", "globex"),
    )

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            running_gateway(tmp_path / "tenants.json", port) as gw,
        ):
            call = gw.channel.unary_unary(
                "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                request_serializer=None,
                response_deserializer=None,
            )
            await call(request.SerializeToString(), metadata=headers, timeout=10)
            # A second authorization value never switches the tenant either:
            # refused where the transport joins the values (authorization_from).
            duplicate = (*headers, ("authorization", f"Bearer {keys['globex']}"))
            status = grpc.StatusCode.OK
            try:
                await call(request.SerializeToString(), metadata=duplicate, timeout=10)
            except grpc.aio.AioRpcError as exc:
                status = exc.code()
            assert status in (grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED)
        assert collector.received
        for received in collector.received:
            for resource_metrics in received.resource_metrics:
                assert "globex" not in attributes_of(resource_metrics.resource.attributes).values()
                for scope_metrics in resource_metrics.scope_metrics:
                    scope = attributes_of(scope_metrics.scope.attributes)
                    assert "globex" not in scope.values()
                    for metric in scope_metrics.metrics:
                        for point in metric.sum.data_points:
                            assert attributes_of(point.attributes) == {"tenant_id": "acme"}

    asyncio.run(scenario())
