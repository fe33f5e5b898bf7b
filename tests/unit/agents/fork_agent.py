"""A connector that forks: run as `python fork_agent.py`, settings from the environment.

The parent counts 1,000 queries, then starts a child with `os.fork` that counts 99
and exits normally, and a multiprocessing 'fork' child that counts 7 and ends as
multiprocessing children do (`os._exit`). The export interval is long: what arrives
is each process's final export. Prints each process's pid, one per line.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

from otel_agents import connector_metrics, setup_metrics

telemetry = setup_metrics("fork-demo", "connector")
metrics = connector_metrics(telemetry)


def count(queries: int) -> None:
    for _ in range(queries):
        metrics.record_query()


def multiprocessing_child() -> None:
    count(7)


def main() -> None:
    count(1000)
    pid = os.fork()
    if pid == 0:
        count(99)
        sys.exit(0)  # exit hooks run: the final export
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = multiprocessing.get_context("fork").Process(target=multiprocessing_child)
    child.start()
    child.join(60)
    assert child.exitcode == 0
    print(os.getpid(), pid, child.pid, flush=True)


if __name__ == "__main__":
    main()
