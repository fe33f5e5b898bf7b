"""Alert truth at fleet scale: every agent death pages within 3 minutes, nothing else does.

Run: `.venv/bin/python -m bench.bench_alerts` (about 6 minutes; `--quick`: 2 trials
of each kill case with 5 s exports, about 5 minutes). The real stack runs as
processes from the repository's files, with their defaults (bench/fleet_scenarios.py:
Collector, gateway with an admin key, Prometheus evaluating prometheus/rules/ every
10 s with the 120 s silence threshold, Alertmanager with alertmanager.yml, a Prefect
server), and every scenario of docs/operations.md's table happens at once:
`--trials` (default 10) trials of each kill case (one of three same-named
connectors, a lone connector) and one of every other case. Agents export at the
library's default interval (30 s) unless `--export-ms` says otherwise; they start at
random moments, so each kill falls at a random phase of its agent's export cycle.

For each scenario: the alert it raised in Alertmanager (routed to `oncall` for a
page) and the seconds from the event; when the port of alertmanager.yml's webhook
receivers is free, also when Alertmanager notified it there. A page of no
scenario's expected death is a false page. Prints the table, p50 and max, and
writes bench/results/bench_alerts.json; asserts nothing. Target: every death paged
within 3 minutes, 0 false pages.
"""

from __future__ import annotations

import argparse
import http.server
import json
import statistics
import tempfile
import threading
import time
import urllib.parse
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from bench.fleet_scenarios import (
    PAGE_DEADLINE_S,
    QUIET_UNTIL_S,
    FleetRun,
    Outcome,
    add_every_scenario,
    fleet_stack,
    format_table,
)
from stack.local import ALERTMANAGER_CONFIG

RESULTS = Path(__file__).resolve().parent / "results" / "bench_alerts.json"
DEATHS = ("ConnectorSilent", "DataAgentSilent")


class Notifications:
    """Alertmanager's webhook notifications, on the address alertmanager.yml names."""

    def __init__(self) -> None:
        """Listen if the port is free; `firing` maps (tenant, service, instance) → Unix time."""
        self.firing: dict[tuple[str, str, str], float] = {}
        self.server: http.server.ThreadingHTTPServer | None = None
        config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
        urls = [
            urllib.parse.urlsplit(hook["url"])
            for receiver in config["receivers"]
            for hook in receiver.get("webhook_configs", [])
        ]
        addresses = {(url.hostname or "", url.port or 80) for url in urls}
        self.address = ", ".join(f"{host}:{port}" for host, port in sorted(addresses))
        self.problem = ""
        if len(addresses) != 1:
            self.problem = f"the webhooks are not on one address ({self.address})"
            return
        try:
            self.server = http.server.ThreadingHTTPServer(addresses.pop(), self._handler())
        except OSError as exc:
            self.problem = f"{self.address} is in use ({exc.strerror})"
            return
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                now = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.end_headers()
                try:
                    alerts = json.loads(body).get("alerts", [])
                except ValueError:
                    return
                for alert in alerts:
                    labels = alert.get("labels", {})
                    if alert.get("status") == "firing" and labels.get("alertname") in DEATHS:
                        key = (labels["tenant_id"], labels["service"], labels.get("instance", ""))
                        owner.firing.setdefault(key, now)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        return Handler

    def close(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.shutdown()


def _summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "max": None}
    return {
        "count": len(values),
        "p50": round(statistics.median(values), 1),
        "max": round(max(values), 1),
    }


def report(
    run: FleetRun, outcomes: list[Outcome], notifications: Notifications, seconds: float
) -> dict[str, Any]:
    """Print the table and the figures; the JSON document of the run."""
    print(format_table(outcomes))
    deaths = [o for o in outcomes if o.expected and o.expected.split("@")[0] in DEATHS]
    by_kind: dict[str, list[float]] = {}
    notified: dict[str, list[float]] = {}
    for scenario, outcome in zip(run.scenarios, outcomes, strict=True):
        if outcome not in deaths or outcome.seconds_to_alert is None:
            continue
        by_kind.setdefault(outcome.name, []).append(outcome.seconds_to_alert)
        instance = scenario.agents[scenario.target].instance
        sent = notifications.firing.get((scenario.tenant, scenario.service, instance))
        if sent is not None:
            notified.setdefault(outcome.name, []).append(sent - scenario.event_at)
    false_pages = run.unexplained_pages()
    missed = [o.name for o in deaths if not o.ok]
    all_alerted = [t for values in by_kind.values() for t in values]
    all_notified = [t for values in notified.values() for t in values]
    print(
        f"\ndeaths: {len(deaths)}, paged within {PAGE_DEADLINE_S:.0f} s: "
        f"{len(deaths) - len(missed)}; false pages: {len(false_pages)}; quiet cases with an "
        f"alert: {sum(1 for o in outcomes if o.expected is None and o.alerts)}"
    )
    for name, values in sorted(by_kind.items()):
        line = f"  {name}: in Alertmanager {_summary(values)}"
        if name in notified:
            line += f", notified {_summary(notified[name])}"
        print(line)
    print(
        f"  all deaths: in Alertmanager {_summary(all_alerted)}, notified {_summary(all_notified)}"
    )
    clashes = [o for o in outcomes if (o.expected or "").startswith("AgentIdentityClash")]
    for outcome in clashes:
        print(f"  {outcome.name}: AgentIdentityClash in Alertmanager {outcome.seconds_to_alert} s")
    if notifications.problem:
        print(f"  notifications not measured: {notifications.problem}")
    return {
        "seconds": round(seconds, 1),
        "export_interval_ms": run.export_interval_ms,
        "deaths": len(deaths),
        "missed": missed,
        "false_pages": false_pages,
        "alerted": {name: _summary(v) for name, v in by_kind.items()},
        "notified": {name: _summary(v) for name, v in notified.items()},
        "all_alerted": _summary(all_alerted),
        "all_notified": _summary(all_notified),
        "clash_seconds": [o.seconds_to_alert for o in clashes],
        "outcomes": [asdict(o) for o in outcomes],
    }


def main() -> None:
    """Run every scenario once and the kill cases `--trials` times; print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 trials, 5 s exports")
    parser.add_argument("--trials", type=int, help="trials of each kill case (default 10)")
    parser.add_argument(
        "--export-ms", type=int, help="agents' export interval (default: the library's 30 s)"
    )
    args = parser.parse_args()
    trials = args.trials or (2 if args.quick else 10)
    export_ms = args.export_ms or (5000 if args.quick else 30000)
    started = time.monotonic()
    notifications = Notifications()
    with (
        tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp,
        fleet_stack(Path(tmp), export_ms) as run,
    ):
        # Agent starts spread over one export interval (4 per trial and 12 others).
        run.start_gap_s = export_ms / 1000 / (4 * trials + 12)
        add_every_scenario(run, trials=trials)
        agents = sum(len(s.agents) for s in run.scenarios)
        print(f"{len(run.scenarios)} scenarios, {agents} agents, exports every {export_ms} ms")
        ready = run.wait_until_reporting(timeout=300)
        print(f"every agent reporting after {ready:.0f} s; events now")
        run.run_events()
        run.watch(QUIET_UNTIL_S + export_ms / 1000)
        outcomes = run.outcomes()
        document = report(run, outcomes, notifications, time.monotonic() - started)
    notifications.close()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2))
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
