"""The in-flight bound and each tenant's share of it, as plain objects."""

from __future__ import annotations

import pytest

from gateway.errors import Overloaded, PeerOverloaded, TenantOverloaded
from gateway.inflight import InFlight
from gateway.peers import PeerCounts


def test_one_tenant_holds_at_most_its_share_of_requests_and_the_others_get_the_rest() -> None:
    bound = InFlight(max_requests=4, max_bytes=1000, tenant_share=0.5)
    held = [bound.enter(10, "alpha"), bound.enter(10, "alpha")]

    with pytest.raises(TenantOverloaded) as refused:
        bound.enter(10, "alpha")
    assert "in_flight_tenant_share=0.5" in str(refused.value)
    assert 1 <= (refused.value.retry_after_seconds or 0) <= 3
    beta = [bound.enter(10, "beta"), bound.enter(10, "beta")]
    with pytest.raises(Overloaded):  # the gateway's own bound comes first
        bound.enter(10, "gamma")

    assert bound.held_by("alpha") == (2, 20)
    for lease in held + beta:
        lease.release()
    assert (bound.requests, bound.bytes, bound.held_by("alpha")) == (0, 0, (0, 0))
    bound.enter(10, "alpha")  # released: room again


def test_one_tenant_holds_at_most_its_share_of_bytes_as_its_bodies_grow() -> None:
    bound = InFlight(max_requests=10, max_bytes=1000, tenant_share=0.5)
    first = bound.enter(400, "alpha")
    second = bound.enter(0, "alpha")

    with pytest.raises(TenantOverloaded):
        second.grow(101)  # 501 > 500
    second.grow(100)
    other = bound.enter(500, "beta")  # the other half is still there

    assert bound.held_by("alpha") == (2, 500)
    for lease in (first, second, other):
        lease.release()
    assert bound.bytes == 0


def test_a_request_alone_in_its_tenant_may_hold_what_its_size_limit_allows() -> None:
    bound = InFlight(max_requests=10, max_bytes=1000, tenant_share=0.1)
    lease = bound.enter(0, "alpha")
    lease.grow(800)  # over the share (100), but alone: bounded by max_request_bytes
    assert bound.held_by("alpha") == (1, 800)
    with pytest.raises(TenantOverloaded):
        bound.enter(1, "alpha")


def test_an_address_holds_at_most_its_cap_and_zero_turns_the_cap_off() -> None:
    peers = PeerCounts(2, "gRPC calls", "max_grpc_calls_per_peer")
    held = [peers.enter("ipv4:10.0.0.1:1000"), peers.enter("ipv4:10.0.0.1:1001")]

    with pytest.raises(PeerOverloaded) as refused:
        peers.enter("ipv4:10.0.0.1:1002")
    assert "max_grpc_calls_per_peer=2" in str(refused.value)
    assert refused.value.retry_after_seconds is not None
    assert peers.enter("ipv4:10.0.0.2:1000") == ("10.0.0.2", "")  # another address
    assert peers.enter("ipv4:10.0.0.1:1003", "acme") == ("10.0.0.1", "acme")  # a tenant's own
    for address in held:
        peers.leave(address)
    assert peers.held("ipv4:10.0.0.1:1") == 0
    assert peers.held("ipv4:10.0.0.1:1", "acme") == 1

    off = PeerCounts(0, "gRPC calls", "max_grpc_calls_per_peer")
    assert all(off.enter("ipv4:10.0.0.1:1") is None for _ in range(100))
