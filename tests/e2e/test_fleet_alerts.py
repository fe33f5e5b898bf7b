"""Fleet truth: every agent death pages on-call within 3 minutes, nothing else pages.

Real agents (otel_agents connectors, Prefect data agents, a plain OpenTelemetry
client, `otel-agents check`) against a stack of its own: the Collector, the gateway
with an admin key, Prometheus with the repository's rules, Alertmanager with its
alertmanager.yml, a Prefect server. Every scenario of docs/operations.md's table
happens at once (bench/fleet_scenarios.py); Alertmanager is watched for 200 s.
So every alert expression is checked against series the real library produced.
bench/bench_alerts.py runs the kill cases many times.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict

import pytest
from needs import require

from bench.fleet_scenarios import (
    PAGE_DEADLINE_S,
    FleetRun,
    Outcome,
    add_every_scenario,
    fleet_stack,
    format_table,
)
from stack.local import StackError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
CONTAINERS = "SIGKILL of one of two containers sharing the machine id"
pytest.importorskip("prefect")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetRun]:
    """Every scenario, run and watched once."""
    try:
        with fleet_stack(tmp_path_factory.mktemp("fleet")) as run:
            add_every_scenario(run)
            run.wait_until_reporting(timeout=180)
            run.run_events()
            run.watch()
            yield run
    except StackError as exc:
        if "not installed" in str(exc) or "building" in str(exc):
            require("the stack", exc)
        raise


@pytest.fixture(scope="module")
def outcomes(fleet: FleetRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Each scenario's outcome by name; the table is printed and kept as JSON."""
    results = {outcome.name: outcome for outcome in fleet.outcomes()}
    path = tmp_path_factory.getbasetemp() / "fleet-alerts.json"
    path.write_text(json.dumps([asdict(o) for o in results.values()], indent=2))
    print(f"\n{format_table(list(results.values()))}\n[fleet figures] written to {path}")
    return results


def test_every_death_pages_within_3_minutes_for_that_instance_only(
    outcomes: dict[str, Outcome],
) -> None:
    deaths = [o for o in outcomes.values() if o.expected and "Silent" in o.expected]
    assert len(deaths) == (6 if CONTAINERS in outcomes else 5)
    for outcome in deaths:
        assert outcome.alerts == [outcome.expected], outcome
        assert outcome.seconds_to_alert is not None
        assert outcome.seconds_to_alert <= PAGE_DEADLINE_S, outcome


def test_nothing_else_pages(fleet: FleetRun, outcomes: dict[str, Outcome]) -> None:
    assert fleet.unexplained_pages() == []
    quiet = [o for o in outcomes.values() if o.expected is None]
    assert len(quiet) == 6
    for outcome in quiet:
        assert outcome.alerts == [], outcome


def test_the_survivors_of_a_same_named_trio_stay_up(outcomes: dict[str, Outcome]) -> None:
    trio = outcomes["SIGKILL of one of three same-named connectors"]
    killed = trio.detail["instances"][1]
    assert len(set(trio.detail["instances"])) == 3
    assert trio.fleet_status == {
        **{instance: "up" for instance in trio.detail["instances"]},
        killed: "silent",
    }


def test_containers_sharing_the_machine_id_are_agents_of_their_own(
    outcomes: dict[str, Outcome],
) -> None:
    if CONTAINERS not in outcomes:
        pytest.skip("new UTS and mount namespaces need root and unshare(1)")
    survivor, killed = outcomes[CONTAINERS].detail["instances"]
    assert survivor != killed
    assert outcomes[CONTAINERS].fleet_status == {survivor: "up", killed: "silent"}


def test_a_second_process_under_one_id_raises_the_clash_warning(
    fleet: FleetRun, outcomes: dict[str, Outcome]
) -> None:
    clash = outcomes["a second process with the same service.instance.id"]
    assert clash.alerts == ["AgentIdentityClash@shared-id-connector-0"], clash
    # Its first export one interval (5 s) after its start, two intervals, then a
    # scrape and an evaluation (10 s each) and Alertmanager's poll.
    assert clash.seconds_to_alert is not None
    assert clash.seconds_to_alert <= 3 * 5 + 20 + 10, clash
    assert clash.fleet_status == {"shared-id-connector-0": "up"}
    (alert,) = [
        a for _, a in fleet.alerts_seen.values() if a["labels"]["alertname"] == "AgentIdentityClash"
    ]
    assert alert["labels"]["severity"] == "warning"
    assert [r["name"] for r in alert["receivers"]] == ["team"]


def test_lifecycle_states_in_the_fleet(outcomes: dict[str, Outcome]) -> None:
    assert list(outcomes["graceful stop (SIGTERM)"].fleet_status.values()) == ["stopped"]
    assert list(outcomes["cron flow script that exits"].fleet_status.values()) == ["stopped"]
    retired = outcomes["retiring an agent (SIGKILL, retired 10 s later)"]
    assert retired.detail["forget"][0] == 0, retired.detail["forget"]
    assert list(retired.fleet_status.values()) == ["retired"]
    assert list(outcomes["SIGKILL of a lone connector"].fleet_status.values()) == ["silent"]


def test_a_restarted_agent_is_the_same_instance_with_one_set_of_series(
    fleet: FleetRun, outcomes: dict[str, Outcome]
) -> None:
    restarted = outcomes["agent restart (SIGKILL, back 5 s later)"]
    (instance,) = restarted.detail["instances"]
    assert restarted.fleet_status == {instance: "up"}
    series = fleet.stack.query('connector_uptime_seconds{job="restart-connector"}')
    assert [s["metric"]["instance"] for s in series] == [instance]
    # Its uptime restarted: the series carries the new process's values.
    assert float(series[0]["value"][1]) < 200


def test_check_and_other_clients_never_page_and_check_leaves_no_trace(
    fleet: FleetRun, outcomes: dict[str, Outcome]
) -> None:
    status, output = outcomes["otel-agents check"].detail["check"]
    assert status == 0, output
    everyone = [agent for agents in fleet.fleet().values() for agent in agents]
    assert not [a for a in everyone if a["service"] == "otel-agents-check"]
    (client,) = [a for a in everyone if a["service"] == "js-client"]
    assert client["type"] == "other"


def test_the_failing_flow_alerts_by_its_flow_label_and_healthy_flows_do_not(
    fleet: FleetRun, outcomes: dict[str, Outcome]
) -> None:
    failing = outcomes["a flow that starts failing among healthy flows"]
    assert failing.alerts == ["DataAgentFlowFailureRateHigh@flaky-flow"]
    alerts = [
        alert
        for _, alert in fleet.alerts_seen.values()
        if alert["labels"]["alertname"] == "DataAgentFlowFailureRateHigh"
    ]
    (alert,) = alerts
    labels = alert["labels"]
    assert (labels["severity"], labels["service"], labels["flow"]) == (
        "warning",
        "flows-etl",
        "flaky-flow",
    )
    assert labels["instance"] == failing.detail["instances"][0]
    assert alert["annotations"]["summary"].startswith("Flow flaky-flow of data agent flows-etl")
    assert [r["name"] for r in alert["receivers"]] == ["team"]


def test_pages_reach_the_oncall_receiver(fleet: FleetRun) -> None:
    pages = [a for _, a in fleet.alerts_seen.values() if a["labels"]["severity"] == "critical"]
    assert pages
    for alert in pages:
        assert [r["name"] for r in alert["receivers"]] == ["oncall"]
        assert alert["labels"]["host"]
        assert alert["annotations"]["runbook_url"].startswith("docs/operations.md#")
