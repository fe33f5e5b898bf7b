"""Run the whole benchmark suite: `python -m bench [--quick] [--only a,b]`.

Each benchmark runs in a process of its own, one after the other (they must
not share the two cores), writes bench/results/<name>.json and prints its
table; this prints a line per benchmark as it starts and ends, and a summary.
The soak (bench_soak, 30 minutes) runs only when named with --only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench import plot

REPO = Path(__file__).resolve().parent.parent

# In the order of docs/benchmarks.md; each is `python -m bench.<name>`.
SUITE = (
    "bench_connector",
    "bench_connector_cpu",
    "ingest",
    "bench_freshness",
    "bench_alerts",
    "bench_isolation",
    "scale",
)
OPTIONAL = ("bench_soak",)


def main(argv: list[str] | None = None) -> int:
    """Run the suite; the exit status is the number of benchmarks that failed."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="each benchmark's short version")
    parser.add_argument(
        "--only", help=f"comma-separated names (default: all of {', '.join(SUITE)})"
    )
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SUITE)
    unknown = [n for n in names if n not in SUITE + OPTIONAL]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {SUITE + OPTIONAL}")
    failed = []
    started = time.monotonic()
    for index, name in enumerate(names, 1):
        print(f"\n=== [{index}/{len(names)}] {name}", flush=True)
        began = time.monotonic()
        command = [sys.executable, "-m", f"bench.{name}"]
        if args.quick and name != "bench_connector":  # that one is short already
            command.append("--quick")
        status = subprocess.run(command, cwd=REPO, check=False).returncode
        took = time.monotonic() - began
        print(f"=== {name}: {'ok' if status == 0 else f'FAILED ({status})'} in {took:.0f} s")
        if status != 0:
            failed.append(name)
    plot.main()  # the SVG figures of docs/benchmarks.md
    total = time.monotonic() - started
    print(f"\n{len(names) - len(failed)} of {len(names)} benchmarks ran in {total / 60:.1f} min")
    print(f"figures: {REPO / 'bench' / 'results'}/*.json")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
