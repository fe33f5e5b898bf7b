"""What one client address holds at once: gRPC calls in progress, HTTP connections open.

A cap per address keeps one host (or one attacker) from taking every call or
connection the gateway can serve, whoever it authenticates as. Addresses are
the transport's peer (an IPv6 client counts by its /64, as in
gateway.throttle): behind a proxy or a load balancer that hides client
addresses every client is the proxy, so turn the caps off there (0).
"""

from __future__ import annotations

from gateway.errors import PeerOverloaded
from gateway.inflight import retry_delay
from gateway.throttle import peer_address


class PeerCounts:
    """Counts what each address holds; refuses one more past `limit` (0: no cap)."""

    def __init__(self, limit: int, what: str, setting: str) -> None:
        self.limit = limit
        self._what = what
        self._setting = setting
        self._held: dict[str, int] = {}

    def enter(self, peer: str) -> str | None:
        """Count one more for `peer` (a transport's peer string); its address, to
        give back to `leave` (None: not counted). Raise PeerOverloaded at the cap."""
        address = peer_address(peer) if self.limit else None
        if address is None:
            return None
        held = self._held.get(address, 0)
        if held >= self.limit:
            raise PeerOverloaded(
                f"your address {address} has {held} {self._what} open, the most one address "
                f"may (setting {self._setting}={self.limit}); retry later, or spread the "
                "load over fewer, longer-lived connections",
                retry_after_seconds=retry_delay(),
            )
        self._held[address] = held + 1
        return address

    def leave(self, address: str | None) -> None:
        """One fewer for `address` (what `enter` returned)."""
        if address is None:
            return
        held = self._held.get(address, 0) - 1
        if held > 0:
            self._held[address] = held
        else:
            self._held.pop(address, None)

    def held(self, peer: str) -> int:
        """What `peer`'s address holds now."""
        address = peer_address(peer)
        return self._held.get(address, 0) if address is not None else 0
