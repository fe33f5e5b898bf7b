"""Which agent a Prefect process is: its service name and version, given or derived.

Where this sits: `instrument()` ──(*naming*)──▶ setup_metrics ──▶ OTLP ──▶ gateway.

Every tenant's agents must not share one name, and the agent's version is the agent's,
never this library's. So the name and version come from, in order: the arguments of
`instrument()`; OTEL_SERVICE_NAME and `service.version` in OTEL_RESOURCE_ATTRIBUTES
(the standard variables, which `setup_metrics` applies anyway); for the name only, the
main script (``nightly_etl.py`` → ``nightly_etl``, ``python -m etl.run`` → ``etl.run``).
What had to be derived is said in one log line when the metrics start.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from urllib.parse import unquote

FALLBACK_SERVICE_NAME = "prefect-agent"
"""The name of last resort (an interactive session): nothing better is known."""

_SOURCE = "argument"


@dataclass(frozen=True)
class AgentName:
    """A data agent's service name and version, and where each came from."""

    service_name: str
    version: str | None
    name_from: str
    """"argument", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "the main script" or
    "nothing"."""
    version_from: str
    """"argument", "OTEL_RESOURCE_ATTRIBUTES" or "nothing"."""

    def over(self, earlier: AgentName) -> AgentName:
        """This name, keeping what `earlier` had from arguments where this one had none."""
        name, name_from = self.service_name, self.name_from
        if earlier.name_from == _SOURCE and name_from != _SOURCE:
            name, name_from = earlier.service_name, earlier.name_from
        version, version_from = self.version, self.version_from
        if earlier.version_from == _SOURCE and version_from != _SOURCE:
            version, version_from = earlier.version, earlier.version_from
        return AgentName(name, version, name_from, version_from)

    def note(self) -> str | None:
        """The one line to log when name or version had to be derived or are missing."""
        parts = []
        if self.name_from == "the main script":
            parts.append(f"is named {self.service_name!r} after the main script")
        elif self.name_from == "nothing":
            parts.append(f"is named {self.service_name!r}, as nothing else names it")
        if self.version is None:
            parts.append("has no version, so Prometheus shows none (service_version)")
        if not parts:
            return None
        return (
            f"otel_agents: this Prefect agent {' and '.join(parts)}: pass service_name= and "
            "version= to instrument(), or set OTEL_SERVICE_NAME and service.version in "
            "OTEL_RESOURCE_ATTRIBUTES"
        )


def agent_name(
    service_name: str | None,
    version: str | None,
    environ: Mapping[str, str] | None = None,
    main: ModuleType | None = None,
    argv: Sequence[str] | None = None,
) -> AgentName:
    """The agent's name and version: the arguments, else the environment, else derived."""
    environ = os.environ if environ is None else environ
    resource = _resource_attributes(environ.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    if service_name and service_name.strip():
        name, name_from = service_name.strip(), _SOURCE
    elif environ.get("OTEL_SERVICE_NAME", "").strip():
        name, name_from = environ["OTEL_SERVICE_NAME"].strip(), "OTEL_SERVICE_NAME"
    elif resource.get("service.name"):
        name, name_from = resource["service.name"], "OTEL_RESOURCE_ATTRIBUTES"
    else:
        script = main_script_name(sys.modules.get("__main__") if main is None else main, argv)
        name, name_from = (
            (script, "the main script") if script else (FALLBACK_SERVICE_NAME, "nothing")
        )
    if version and version.strip():
        return AgentName(name, version.strip(), name_from, _SOURCE)
    if resource.get("service.version"):
        return AgentName(name, resource["service.version"], name_from, "OTEL_RESOURCE_ATTRIBUTES")
    return AgentName(name, None, name_from, "nothing")


def main_script_name(main: ModuleType | None, argv: Sequence[str] | None = None) -> str | None:
    """``nightly_etl`` for ``python nightly_etl.py``, ``etl.run`` for ``python -m etl.run``."""
    spec = getattr(main, "__spec__", None)
    module = getattr(spec, "name", None)
    if module:
        return str(module).removesuffix(".__main__")
    path = getattr(main, "__file__", None) or (argv or sys.argv or [""])[0]
    if not path or path in ("-c", "-m"):
        return None
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem or None


def _resource_attributes(raw: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            found[key.strip()] = unquote(value.strip())
    return found
