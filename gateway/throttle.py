"""Refuse clients that keep failing to authenticate.

After `max_failures` failed authentications from one address within
`window_seconds`, that address's failures are refused as throttled for
`block_seconds` (a valid credential from it still passes: gateway.auth).
Memory is bounded: at most `max_peers` addresses are remembered, the least
recently seen is forgotten first. IPv6 clients are tracked by their /64 network,
since one host usually owns a whole /64.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MAX_PEERS = 10_000


# A connection's peer string is the same for each of its requests.
@functools.lru_cache(maxsize=4096)
def peer_address(peer: str) -> str | None:
    """The client's IP address (an IPv6 one as its /64) from a transport's peer
    string: gRPC's `ipv4:1.2.3.4:5678` or `ipv6:[::1]:5678`, or `1.2.3.4`,
    `1.2.3.4:5678`, `[::1]:5678`, `::1`. None when there is no IP (unix socket)."""
    text = peer
    for prefix in ("ipv4:", "ipv6:"):
        text = text.removeprefix(prefix)
    if text.startswith("["):  # [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    text = text.partition("%")[0]  # an IPv6 zone (fe80::1%eth0, %25 in gRPC's form)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Peer:
    window_start: float
    failures: int = 0
    blocked_until: float = 0.0


class FailureThrottle:
    """Counts failed authentications per address and says when one is blocked.

    Thread-safe; `max_failures=0` turns it off.
    """

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        block_seconds: float,
        max_peers: int = MAX_PEERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.block_seconds = block_seconds
        self._max_peers = max_peers
        self._clock = clock
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self._lock = threading.Lock()
        self.failures: dict[str, int] | None = None
        """With a shared state store: failures since its last exchange, by address."""

    def retry_after(self, address: str | None) -> float:
        """Seconds until `address` may try again; 0 when it is not blocked."""
        if address is None or not self.max_failures:
            return 0.0
        now = self._clock()
        with self._lock:
            peer = self._peers.get(address)
            if peer is None or peer.blocked_until == 0.0:
                return 0.0
            if peer.blocked_until <= now:  # served its time: a fresh start
                del self._peers[address]
                return 0.0
            self._peers.move_to_end(address)  # a peer still knocking stays remembered
            return peer.blocked_until - now

    def record_failure(self, address: str | None) -> None:
        """Count one failed authentication from `address`; block it at the limit."""
        if address is None or not self.max_failures:
            return
        now = self._clock()
        with self._lock:
            peer = self._peers.get(address)
            if peer is None or now - peer.window_start > self.window_seconds:
                peer = _Peer(window_start=now)
            self._peers[address] = peer
            self._peers.move_to_end(address)
            while len(self._peers) > self._max_peers:
                self._peers.popitem(last=False)
            peer.failures += 1
            if self.failures is not None and (
                address in self.failures or len(self.failures) < self._max_peers
            ):
                self.failures[address] = self.failures.get(address, 0) + 1
            if peer.failures >= self.max_failures and peer.blocked_until == 0.0:
                peer.blocked_until = now + self.block_seconds
                logger.warning(
                    "refusing %s for %.0f s: %d failed authentications within %.0f s",
                    address,
                    self.block_seconds,
                    peer.failures,
                    self.window_seconds,
                )

    def take_failures(self) -> dict[str, int]:
        """The failures counted since the last call, by address (shared state)."""
        with self._lock:
            failures, self.failures = self.failures or {}, {}
            return failures

    def block_for(self, address: str, seconds: float) -> None:
        """Refuse `address` for `seconds` from now: blocked by the shared count."""
        now = self._clock()
        with self._lock:
            peer = self._peers.get(address) or _Peer(window_start=now)
            self._peers[address] = peer
            self._peers.move_to_end(address)
            while len(self._peers) > self._max_peers:
                self._peers.popitem(last=False)
            peer.blocked_until = max(peer.blocked_until, now + seconds)

    @property
    def remembered(self) -> int:
        """How many addresses are remembered."""
        return len(self._peers)
