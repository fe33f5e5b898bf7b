"""A forked child of an agent process: its own counts from zero, its own id, a final export.

Where this sits: agent code ──(otel_agents: *fork handling*)──▶ OTLP/gRPC ──▶ gateway.

After `os.fork` (and multiprocessing's 'fork' start method) the child holds a copy of
everything the parent counted. Exported under another id, the parent's totals would be
counted twice in every sum over instances; under the parent's id, the two processes
would overwrite each other's series. So in the child, right after the fork:

- counts start from zero: the SDK's aggregations are replaced by empty ones and the
  library's own totals (`ConnectorMetrics`, `EtlMetrics`, uptime) are reset;
- it gets an id of its own, unless `service.instance.id` was set explicitly (that
  one is kept, never replaced, with a warning that the two processes share it): the
  lowest free slot of the service on this machine, as a separately started process
  would get (`otel_agents.identity`), so a pool that forks its workers again after a
  restart gets the same ids back; without slot locks, a UUID v5 of the parent's id
  and the child's pid. The SDK's own fork hook, which would set a random id in every
  child, is undone;
- a multiprocessing child, which ends with `os._exit` and so skips `atexit`, runs the
  final export (and frees its slot) from multiprocessing's own exit hook. A child of
  a plain `os.fork` exports at exit like any process, unless it ends with `os._exit`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from typing import Any, Protocol

from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource

from otel_agents.identity import child_instance_id, release_slots
from otel_agents.telemetry import AgentTelemetry

_logger = logging.getLogger(__name__)

# The SDK's exit hooks run finalizers of priority >= 0 first; the final export goes
# early, before the multiprocessing machinery it may need is torn down.
_EXIT_PRIORITY = 10


class Resettable(Protocol):
    """An object that starts afresh in a forked child."""

    def after_fork_in_child(self) -> None:
        """Drop what the parent counted; replace locks another thread may have held."""


_resettable: weakref.WeakSet[Any] = weakref.WeakSet()
_hook_registered = False


def reset_in_children(obj: Resettable) -> None:
    """Call `obj.after_fork_in_child()` in every child forked from now on."""
    global _hook_registered
    _resettable.add(obj)
    if not _hook_registered:
        _hook_registered = True
        os.register_at_fork(after_in_child=_reset_all)


def _reset_all() -> None:
    for obj in list(_resettable):
        try:
            obj.after_fork_in_child()
        except Exception:
            _logger.warning("otel_agents: resetting %r after fork failed", obj, exc_info=True)


def follow_forks(telemetry: AgentTelemetry, provider: SdkMeterProvider, resource: Resource) -> None:
    """Make every child forked from now on a new agent (see the module docstring).

    Call right after creating `provider`: os.fork runs child hooks in registration
    order, and this one must run after the SDK's, which replaces the instance id.
    """
    explicit = any(key == SERVICE_INSTANCE_ID for key, _ in telemetry.config.resource_attributes)
    weak_telemetry = weakref.ref(telemetry)
    weak_provider = weakref.ref(provider)
    state = {"resource": resource}

    def after_in_child() -> None:
        found_telemetry, found_provider = weak_telemetry(), weak_provider()
        if found_telemetry is None or found_provider is None:
            return
        try:
            state["resource"] = _start_child(found_provider, state["resource"], explicit)
            telemetry_after_fork(found_telemetry)
        except Exception:
            _logger.warning(
                "otel_agents: preparing the metrics of a forked process failed; it may "
                "report its parent's counts",
                exc_info=True,
            )

    os.register_at_fork(after_in_child=after_in_child)


def _start_child(provider: SdkMeterProvider, resource: Resource, explicit: bool) -> Resource:
    parent_id = str(resource.attributes.get(SERVICE_INSTANCE_ID, ""))
    if explicit:
        child = resource
        _logger.warning(
            "otel_agents: forked process %d keeps the service.instance.id %r set in "
            "OTEL_RESOURCE_ATTRIBUTES, as its parent does: their series overwrite each "
            "other's. Give each process an id of its own, or leave it unset",
            os.getpid(),
            parent_id,
        )
    else:
        service = str(resource.attributes.get(SERVICE_NAME, ""))
        child_id = child_instance_id(service, parent_id)
        child = Resource({**resource.attributes, SERVICE_INSTANCE_ID: child_id})
    # SDK internals (opentelemetry-sdk 1.45): the resource the SDK's fork hook just
    # replaced, and one fresh storage (empty aggregations) per reader.
    provider._sdk_config.resource = child
    consumer = provider._measurement_consumer
    consumer._lock = threading.Lock()
    for reader in provider._metric_readers:
        if hasattr(reader, "_export_lock"):
            # Held by the parent's export thread when the fork came during an export;
            # that thread does not exist here, so every export would wait for it forever.
            reader._export_lock = threading.Lock()
        consumer.add_metric_reader(reader)
    return child


def telemetry_after_fork(telemetry: AgentTelemetry) -> None:
    """The child's own final export (not one its parent may have started before the
    fork); a multiprocessing child exports once more at its end."""
    telemetry._final.clear()
    if telemetry._exporter is not None:
        telemetry._exporter.after_fork_in_child()
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        # Run by multiprocessing in its child after it clears the parent's finalizers.
        util.register_after_fork(telemetry, _export_at_child_exit)


def _export_at_child_exit(telemetry: AgentTelemetry) -> None:
    util = sys.modules["multiprocessing.util"]
    util.Finalize(None, telemetry.shutdown, exitpriority=_EXIT_PRIORITY)
    util.Finalize(None, release_slots, exitpriority=_EXIT_PRIORITY - 1)  # after the export
