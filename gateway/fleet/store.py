"""The fleet-state file: the table as saved, so that a restarted gateway still knows
which agents were up, stopped or retired (one process's default; replicas share
Redis instead, gateway.state_redis)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from gateway.atomicfile import write_atomically
from gateway.fleet.processes import MAX_PROCESSES, cleaned
from gateway.fleet.resource import MAX_VALUE_CHARS, kept_resource
from gateway.fleet.rows import MAX_OVER_BUDGET_NAMES, Sighting

logger = logging.getLogger(__name__)

STATE_VERSION = 2
TEXTS = ("tenant_id", "agent_type", "service", "instance", "version", "host", "seen_by")
"""The fields of a row read back that must be strings (tables are sorted by them)."""
TIMES = ("first_seen", "last_seen", "silence_from", "state_since", "clash_seen")
"""The fields of a row read back that must be finite numbers: Redis's cjson cannot
write NaN or Infinity, and one such row failed the merge of every row sent with it."""


def read(
    path: Path,
    *,
    now: float,
    silent_after: float,
    max_resource_attributes: int,
    max_resource_bytes: int,
) -> tuple[list[Sighting], str]:
    """The rows saved in `path`, and the `fleet` label they were counted under ("" if
    none); no rows when it is missing or unreadable (logged)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], ""
    except (OSError, ValueError) as exc:
        logger.warning("fleet state %s ignored, starting empty: %s", path, exc)
        return [], ""
    saved = document.get("agents") if isinstance(document, dict) else None
    if not isinstance(saved, list) or document.get("version") not in (1, STATE_VERSION):
        logger.warning("fleet state %s ignored: not a version %d file", path, STATE_VERSION)
        return [], ""
    saved_at = _number(document.get("saved_at"), now)
    known = {f.name for f in fields(Sighting)}
    rows = []
    for raw in saved:
        try:
            row = Sighting(**{k: v for k, v in raw.items() if k in known})
            row.first_seen, row.last_seen = float(row.first_seen), float(row.last_seen)
            row.silence_from = max(float(row.silence_from), row.last_seen)
            row.state_since = float(row.state_since) or row.last_seen
        except (TypeError, ValueError, AttributeError):
            continue  # one damaged row must not keep the gateway from starting
        if not all(isinstance(getattr(row, name), str) for name in TEXTS):
            continue
        if row.state not in ("running", "stopped", "retired"):
            row.state = "running"
        row.over_budget = over_budget_times(row.over_budget)
        row.processes = cleaned(row.processes)
        row.clash_hosts = clash_hosts(row.clash_hosts)
        row.clash_seen = _number(row.clash_seen, 0.0)
        if not all(math.isfinite(getattr(row, name)) for name in TIMES):
            continue
        if not isinstance(row.resource, dict):
            row.resource = {}
        elif row.resource:  # saved by an older gateway, or under larger bounds
            row.resource = kept_resource(
                {k: v for k, v in row.resource.items() if isinstance(v, str)},
                row.tenant_id,
                max_resource_attributes,
                max_resource_bytes,
            )
        if row.state == "running" and saved_at - row.silence_from <= silent_after:
            # Up when the gateway stopped: it could not hear the agent since.
            row.silence_from = max(row.silence_from, now)
        rows.append(row)
    fleet = document.get("fleet")
    return rows, fleet if isinstance(fleet, str) and 0 < len(fleet) <= 64 else ""


def encoded(row: Sighting) -> str:
    """One row as the file keeps it (a string: not one more object for the garbage
    collector to walk, where copies of 50,000 rows made it pause for 150 ms)."""
    return json.dumps(vars(row))


def write_encoded(path: Path, rows: list[str], saved_at: float, fleet: str = "") -> None:
    """Replace `path` with the `encoded` rows (atomically), counted under the `fleet`
    label; raises OSError."""
    head = json.dumps({"version": STATE_VERSION, "saved_at": saved_at, "fleet": fleet})

    def parts() -> Iterator[str]:
        # Row by row: joined into one string first, 50,000 rows of large resources
        # (258 MB) held the event loop ~180 ms at once (a copy never lets go of the GIL).
        yield f'{head[:-1]}, "agents": ['
        for at, row in enumerate(rows):
            yield f",{row}" if at else row
        yield "]}"

    write_atomically(path, parts())


def over_budget_times(value: Any) -> dict[str, float]:
    """A saved name → time table, whatever was saved."""
    if not isinstance(value, dict):
        return {}
    return {
        str(k)[:MAX_VALUE_CHARS]: float(v)
        for k, v in list(value.items())[-MAX_OVER_BUDGET_NAMES:]
        if isinstance(v, int | float) and math.isfinite(v)
    }


def clash_hosts(value: Any) -> list[str]:
    """The hosts of a clash read back, whatever was saved."""
    hosts = value if isinstance(value, list) else []
    return [str(h)[:MAX_VALUE_CHARS] for h in hosts[:MAX_PROCESSES]]


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else default
