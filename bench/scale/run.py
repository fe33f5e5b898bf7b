"""the scale benchmark's moving parts: the simulated agents' process, memory sampling, tenants.

Where this sits: *simagents process* ──▶ gateway ──▶ Collectors ──▶ Prometheus; the
sampler and /proc readings beside every process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.procstat import status_field
from bench.simagents import AGENTS_PER_TENANT, CONNECTORS_PER_TENANT
from gateway import tenants
from stack.local import StackError

REPO = Path(__file__).resolve().parents[2]
LAST_SEEN_PER_AGENT = 2
"""`*_last_seen_seconds` and `*_last_seen_timestamp_seconds`, which the gateway sends
to each agent's Collector (gateway/fleet/series.py)."""


def tenant_name(number: int) -> str:
    """The tenant id of tenant `number` (what the gateway stamps as `tenant_id`)."""
    return f"org-{number:04d}"


@dataclass
class MemorySampler:
    """Samples each process's RSS every half second; peak since the last reset."""

    pids: dict[str, int]
    peak: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Sample in a daemon thread until `stop`."""
        threading.Thread(target=self._run, name="rss-sampler", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def sample(self) -> dict[str, float]:
        """RSS now, MiB; folded into the peaks."""
        now = {}
        for name, pid in self.pids.items():
            rss = status_field(pid, "VmRSS")
            if rss:
                now[name] = rss / 1024
        with self._lock:
            for name, value in now.items():
                self.peak[name] = max(self.peak.get(name, 0.0), value)
        return now

    def take_peaks(self) -> dict[str, float]:
        """The peaks since the previous call, which resets them."""
        with self._lock:
            peaks, self.peak = self.peak, {}
        return peaks

    def stop(self) -> None:
        """End the sampling thread."""
        self._stop.set()


class SimAgents:
    """`bench/simagents.py` in a process of its own, driven through its stdin."""

    def __init__(self, endpoint: str, keys_file: Path, log: Path, interval_s: float) -> None:
        self._log = log.open("ab")
        self.popen = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.simagents"),
                *("--endpoint", endpoint, "--keys", str(keys_file)),
                *("--interval", str(interval_s)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
            text=True,
            start_new_session=True,
        )
        self.ready = self._read()

    def _stdin(self) -> IO[str]:
        assert self.popen.stdin is not None
        return self.popen.stdin

    def _read(self) -> dict[str, Any]:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            raise StackError(f"simagents exited ({self.popen.poll()}); see {self._log.name}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def command(self, text: str) -> None:
        """Send one command line."""
        self._stdin().write(text + "\n")
        self._stdin().flush()

    def stats(self) -> dict[str, Any]:
        """Totals and the window since the previous call."""
        self.command("stats")
        return self._read()

    def identities(self) -> list[tuple[str, str]]:
        """(tenant id, `service.instance.id`) of each running agent, by index."""
        self.command("identities")
        return [(tenant_name(t), instance) for t, instance in self._read()["identities"]]

    def stop(self) -> None:
        """`quit`, then SIGTERM and SIGKILL if it lingers."""
        if self.popen.poll() is None:
            try:
                self.command("quit")
                self.popen.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.popen.terminate()
                try:
                    self.popen.wait(5)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait()
        self._log.close()


def write_tenants(run_dir: Path, count: int) -> Path:
    """tenants.json of `count` tenants, one key each; returns the keys' JSON list file."""
    table = tenants.TenantTable()
    keys = []
    for number in range(count):
        table, key = tenants.add_key(table, tenant_name(number))
        keys.append(key)
    tenants.save(run_dir / "tenants.json", table)
    keys_file = run_dir / "keys.json"
    keys_file.write_text(json.dumps(keys), encoding="utf-8")
    return keys_file


def expected_figures(agents: int, per_type: dict[str, dict[str, int]]) -> dict[str, Any]:
    """What `agents` of the mix should put in Prometheus, from what each type sends
    (simagents' `templates`: own series, target_info excluded)."""
    tenants_full, rest = divmod(agents, AGENTS_PER_TENANT)
    connectors = tenants_full * CONNECTORS_PER_TENANT + min(rest, CONNECTORS_PER_TENANT)
    agents_per_type = {"connector": connectors, "etl": agents - connectors}
    series_per_type = {kind: per_type[kind]["series"] for kind in agents_per_type}
    return {
        "per_type": per_type,
        "agents_per_type": agents_per_type,
        "series_per_type": series_per_type,
        "own_series": sum(n * series_per_type[kind] for kind, n in agents_per_type.items()),
        "target_info": agents,
        "last_seen": LAST_SEEN_PER_AGENT * agents,
        "series_with_budget": sum(
            n * per_type[kind]["series_per_agent"] for kind, n in agents_per_type.items()
        ),
    }
