"""Open files are capacity: each agent's connection holds one descriptor.

Service managers start processes with a soft open-files limit of 1,024 (the hard
one higher); a gateway left at 1,024 serves about a thousand agents, then
accepts no more connections while its health check still says ok. So the
gateway raises its soft limit to the hard one at start, as the Go servers of
this stack do, says how many agents that leaves room for, reports its
descriptors as the usual `process_*` metrics, and answers /readyz 503 near the
limit so that a balancer sends new agents to another replica.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

try:
    import resource
except ImportError:  # not POSIX: nothing to raise or read
    resource = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

RESERVED = 64
"""Descriptors the gateway keeps for itself: listening sockets, Collector
channels, files it reads, the event loop's own."""
NEAR_SHARE = 0.9
"""/readyz answers 503 once this share of the limit is open."""


@dataclass(frozen=True)
class OpenFilesLimit:
    """The soft limit before and after start, and the hard one (0: unknown)."""

    before: int
    soft: int
    hard: int

    @property
    def agents(self) -> int:
        """About how many agents' connections fit beside what the gateway keeps."""
        return max(0, self.soft - RESERVED)


def raise_soft_limit() -> OpenFilesLimit:
    """Raise the soft open-files limit to the hard one and log what it allows."""
    if resource is None:
        return OpenFilesLimit(0, 0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if hard == resource.RLIM_INFINITY:  # Linux refuses an infinite soft limit for files
        hard = os.sysconf("SC_OPEN_MAX") if soft == resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:
            logger.warning("could not raise the open-files limit to %d: %s", hard, exc)
    limit = OpenFilesLimit(before, soft, hard)
    message = "open files: limit %d%s (hard %d): room for about %d agents connected at once"
    raised = f", raised from {before}" if soft != before else ""
    if limit.agents < 10_000:
        logger.warning(
            message + "; raise the hard limit (LimitNOFILE=, ulimit -n) to serve more",
            soft,
            raised,
            hard,
            limit.agents,
        )
    else:
        logger.info(message, soft, raised, hard, limit.agents)
    return limit


def open_count() -> int | None:
    """Descriptors this process has open (None where /proc/self/fd is not available)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def near_limit() -> tuple[int, int] | None:
    """(open, limit) when at least NEAR_SHARE of the soft limit is open, else None."""
    if resource is None:
        return None
    opened = open_count()
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if opened is None or soft == resource.RLIM_INFINITY:
        return None
    return (opened, soft) if opened >= NEAR_SHARE * soft else None
