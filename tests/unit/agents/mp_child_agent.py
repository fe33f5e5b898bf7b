"""Multiprocessing children that set up metrics themselves: `python mp_child_agent.py
METHOD`, settings from the environment. The parent exports nothing; child i counts
i + 1 queries and returns (fork and forkserver children then end with `os._exit`)."""

from __future__ import annotations

import multiprocessing
import sys

from otel_agents import connector_metrics, setup_metrics


def child(index: int) -> None:
    metrics = connector_metrics(setup_metrics("mp-children", "connector"))
    for _ in range(index + 1):
        metrics.record_query()


def main() -> None:
    context = multiprocessing.get_context(sys.argv[1])
    children = [context.Process(target=child, args=(index,)) for index in range(3)]
    for process in children:
        process.start()
    for process in children:
        process.join(60)
        assert process.exitcode == 0


if __name__ == "__main__":
    main()
