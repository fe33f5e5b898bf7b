"""What /proc says of processes and the machine: CPU seconds, memory, threads,
descriptors, affinity (Linux). The benchmarks read /proc only through this module."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid`, all its threads, in seconds; 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is state
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_field(pid: int, name: str) -> int:
    """A numeric field of /proc/<pid>/status (VmRSS in kB, Threads); 0 when unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, CPU seconds incl. reaped children) of a process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # After the name: state, ppid, ..., utime (14th field), stime, cutime, cstime.
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def tree_cpu_seconds(roots: list[int]) -> list[float]:
    """CPU seconds of each root process and its live descendants (uvicorn workers, ...),
    from one pass over /proc."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents[int(entry)], cpu[int(entry)] = stat
    totals = dict.fromkeys(roots, 0.0)
    for pid, seconds in cpu.items():
        ancestor = pid
        while ancestor not in totals and ancestor in parents and ancestor > 1:
            ancestor = parents[ancestor]
        if ancestor in totals:
            totals[ancestor] += seconds
    return [totals[root] for root in roots]


def busy_seconds(cpus: set[int]) -> float:
    """CPU seconds `cpus` spent not idle since boot (/proc/stat: all but idle and iowait)."""
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy / CLOCK_TICKS


def runs_on(pid: int, cpus: set[int]) -> bool:
    try:
        return os.sched_getaffinity(pid) <= cpus
    except OSError:
        return False


def cpus_allowed(pid: int) -> str:
    """The process's CPU affinity as the kernel shows it (e.g. `0`)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return "?"


def cpu_list(text: str) -> set[int]:
    """`0`, `2,3` or `2-3` (taskset's list form) as a set of CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def machine_seconds() -> tuple[float, float, float]:
    """(busy, iowait, total) CPU seconds of the whole machine, all cores (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle, iowait = values[3], values[4]
    total = sum(values)
    return (total - idle - iowait) / CLOCK_TICKS, iowait / CLOCK_TICKS, total / CLOCK_TICKS


def open_fds(pid: int) -> int:
    """Open file descriptors of `pid` (sockets included); 0 when it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def process_state(pid: int) -> str:
    """The one-letter state of process `pid` (T: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def all_cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds (utime + stime) and name of every process now."""
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        found[pid] = (comm, cpu_seconds(pid))
    return found
