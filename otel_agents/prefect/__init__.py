"""Prefect flow and task run metrics for data agents; `instrument()` is the one call.

    from otel_agents.prefect import instrument
    instrument()  # every flow and task run of this process is counted from now on

Flow runs that `flow.serve()` or a process worker start in their own processes are
counted by the runner/worker process through Prefect's plugin system
(PREFECT_PLUGINS_ENABLED=true; see `otel_agents.prefect.plugin`).

Importing this package does not import Prefect; Prefect is needed only when
`instrument()` runs (`pip install 'otel-agents-pipeline[prefect]'`). Supported:
prefect>=3.4,<4 (tested with 3.9); Prefect internals are checked before use.
"""

from otel_agents.prefect.engines import SUPPORTED_PREFECT
from otel_agents.prefect.instrumentation import (
    DEFAULT_SERVICE_NAME,
    PrefectInstrumentation,
    current,
    instrument,
)

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "SUPPORTED_PREFECT",
    "PrefectInstrumentation",
    "current",
    "instrument",
]
