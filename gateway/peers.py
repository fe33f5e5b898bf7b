"""What one client address holds at once: gRPC calls in progress, HTTP connections open.

A cap per address keeps one host (or one attacker) from taking every call or
connection the gateway can serve. Addresses are the transport's peer (an IPv6
client counts by its /64, as in gateway.throttle): behind a proxy or a load
balancer that hides client addresses every client is the proxy, so turn the caps
off there (0). gRPC calls are counted per address and tenant, once the call's
credential is checked: a tenant holding calls at an address it shares with
another (a NAT, a node) uses its own allowance, not the other's.
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
        self._held: dict[tuple[str, str], int] = {}

    def enter(self, peer: str, tenant_id: str = "") -> tuple[str, str] | None:
        """Count one more for `peer` (a transport's peer string) and `tenant_id`
        ("": before any credential); what to give back to `leave` (None: not
        counted). Raise PeerOverloaded at the cap."""
        address = peer_address(peer) if self.limit else None
        if address is None:
            return None
        key = (address, tenant_id)
        held = self._held.get(key, 0)
        if held >= self.limit:
            whose = f"tenant {tenant_id!r} at your address" if tenant_id else "your address"
            raise PeerOverloaded(
                f"{whose} {address} has {held} {self._what} open, the most one address "
                f"may (setting {self._setting}={self.limit}); retry later, or spread the "
                "load over fewer, longer-lived connections",
                retry_after_seconds=retry_delay(),
            )
        self._held[key] = held + 1
        return key

    def leave(self, key: tuple[str, str] | None) -> None:
        """One fewer for `key` (what `enter` returned)."""
        if key is None:
            return
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)

    def held(self, peer: str, tenant_id: str = "") -> int:
        """What `peer`'s address holds now (for `tenant_id`)."""
        address = peer_address(peer)
        return self._held.get((address, tenant_id), 0) if address is not None else 0
