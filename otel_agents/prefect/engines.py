"""Observes every flow and task run of this process at Prefect's engines.

Where this sits: Prefect engine ──(*engines*)──▶ tracker ──▶ sink.

Prefect has no process-wide hook setting. Each engine (flow and task, sync and async)
dispatches every state change to user hooks through one method, `call_hooks`; a task's
crash bypasses it through `handle_crash`. Wrapping those methods on the engine classes
sees every run of the process, whichever flow or task object it belongs to and whenever
that object was defined. Both are internal methods: they are looked up and checked
before anything is patched, and a Prefect without them is left alone with one warning.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from otel_agents.prefect.tracker import RunTracker

_logger = logging.getLogger(__name__)

SUPPORTED_PREFECT = ">=3.4,<4"
"""Prefect versions whose engines this module was written against (tested: 3.9)."""

_ORIGINAL = "__otel_agents_original__"

Kind = Literal["flow", "task", "task_crash"]


@dataclass(frozen=True)
class _Target:
    module: str
    cls: str
    method: str
    kind: Kind
    is_async: bool

    @property
    def name(self) -> str:
        return f"{self.module}.{self.cls}.{self.method}"


_TARGETS = (
    _Target("prefect.flow_engine", "FlowRunEngine", "call_hooks", "flow", False),
    _Target("prefect.flow_engine", "AsyncFlowRunEngine", "call_hooks", "flow", True),
    _Target("prefect.task_engine", "SyncTaskRunEngine", "call_hooks", "task", False),
    _Target("prefect.task_engine", "AsyncTaskRunEngine", "call_hooks", "task", True),
    _Target("prefect.task_engine", "SyncTaskRunEngine", "handle_crash", "task_crash", False),
    _Target("prefect.task_engine", "AsyncTaskRunEngine", "handle_crash", "task_crash", True),
)

_lock = threading.Lock()
_tracker: RunTracker | None = None
_patched: list[tuple[type, str, Callable[..., Any]]] = []
_failed_once: set[str] = set()


def install(tracker: RunTracker) -> list[str]:
    """Route every flow and task run of this process to `tracker`; return what is missing.

    All-or-nothing for the hook dispatchers: when one is missing nothing is patched and
    the list names it. A missing `handle_crash` only loses task crashes (still listed).
    Installing again only swaps the tracker.
    """
    global _tracker
    with _lock:
        found: list[tuple[_Target, type, Callable[..., Any]]] = []
        missing: list[str] = []
        for target in _TARGETS:
            resolved = _resolve(target)
            if resolved is None:
                missing.append(target.name)
            else:
                found.append((target, *resolved))
        if any(not name.endswith("handle_crash") for name in missing):
            return missing
        _tracker = tracker
        for target, cls, original in found:
            if getattr(original, _ORIGINAL, None) is not None:
                continue  # already wrapped: the wrapper reads the current tracker
            wrapper = _wrap(target, original)
            setattr(cls, target.method, wrapper)
            _patched.append((cls, target.method, original))
        return missing


def uninstall() -> None:
    """Restore the engines' own methods."""
    global _tracker
    with _lock:
        for cls, method, original in reversed(_patched):
            setattr(cls, method, original)
        _patched.clear()
        _tracker = None


def installed() -> bool:
    """True while the engines report to a tracker."""
    return _tracker is not None


def _resolve(target: _Target) -> tuple[type, Callable[..., Any]] | None:
    try:
        module = importlib.import_module(target.module)
    except ImportError:
        return None
    cls = getattr(module, target.cls, None)
    method = getattr(cls, target.method, None) if isinstance(cls, type) else None
    if cls is None or method is None or not callable(method):
        return None
    inner = getattr(method, _ORIGINAL, method)
    if inspect.iscoroutinefunction(inner) != target.is_async:
        return None
    params = list(inspect.signature(inner).parameters)
    expected = "state" if target.method == "call_hooks" else None
    if len(params) < 2 or (expected is not None and params[1] != expected):
        return None
    return cls, method


def _wrap(target: _Target, original: Callable[..., Any]) -> Callable[..., Any]:
    observe = _observe_flow if target.kind == "flow" else _observe_task
    wrapper: Callable[..., Any]
    if target.kind == "task_crash":
        # Observe after the engine has set the Crashed state.
        if target.is_async:

            async def async_crash(self: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    return await original(self, *args, **kwargs)
                finally:
                    _observe(observe, self, None)

            wrapper = async_crash
        else:

            def sync_crash(self: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    return original(self, *args, **kwargs)
                finally:
                    _observe(observe, self, None)

            wrapper = sync_crash
    elif target.is_async:

        async def async_hooks(self: Any, *args: Any, **kwargs: Any) -> Any:
            _observe(observe, self, _state_argument(args, kwargs))
            return await original(self, *args, **kwargs)

        wrapper = async_hooks
    else:

        def sync_hooks(self: Any, *args: Any, **kwargs: Any) -> Any:
            _observe(observe, self, _state_argument(args, kwargs))
            return original(self, *args, **kwargs)

        wrapper = sync_hooks
    functools.update_wrapper(wrapper, original)
    setattr(wrapper, _ORIGINAL, original)
    return wrapper


def _state_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("state")


def _observe(observe: Callable[[RunTracker, Any, Any], None], engine: Any, state: Any) -> None:
    """Never raises: a metrics problem must not change the outcome of the host's run."""
    tracker = _tracker
    if tracker is None:
        return
    try:
        observe(tracker, engine, state)
    except Exception:
        name = getattr(observe, "__name__", "observe")
        if name not in _failed_once:
            _failed_once.add(name)
            _logger.warning(
                "otel_agents: could not count a Prefect run (logged once); runs still run",
                exc_info=True,
            )


def _observe_flow(tracker: RunTracker, engine: Any, state: Any) -> None:
    state = state if state is not None else engine.state
    tracker.flow_state(str(engine.flow_run.id), str(engine.flow.name), _state_type(state))


def _observe_task(tracker: RunTracker, engine: Any, state: Any) -> None:
    state = state if state is not None else engine.state
    task_run = engine.task_run
    tracker.task_state(
        str(task_run.id),
        str(engine.task.name),
        _current_flow_name(),
        _state_type(state),
        int(getattr(task_run, "run_count", 0) or 0),
    )


def _state_type(state: Any) -> str:
    kind = state.type
    return str(getattr(kind, "value", kind))


def _current_flow_name() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    flow = getattr(context, "flow", None) if context is not None else None
    return None if flow is None else str(flow.name)
