"""prometheus/shard-K-of-N.yml: valid, alike but for their number, and covering every rule.

The shards replace prometheus.yml past one Prometheus (docs/scaling.md): each must
scrape what prometheus.yml scrapes, split the Collectors by hashmod, keep every
series' labels apart from its own shard label, and leave the rules that need the
global view to Thanos Ruler. tests/e2e/test_thanos.py runs them.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack.shards import (
    GLOBAL_RULE_FILES,
    PROMETHEUS_DIR,
    RULES_DIR,
    SHARD_RULE_FILES,
    hashmod,
    render_config,
    shard_config,
    shard_counts,
)
from stack.thanos import ALERT_LABEL_DROP, REPLICA_LABELS

PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
SHARD_LABEL = "prometheus_shard"
# Jobs every shard scrapes in full (the gateway) or for itself (its own address,
# renamed after the shard); the others are split by hashmod.
EVERY_SHARD = {"gateway", "prometheus"}
SHARDS = [(index, count) for count in shard_counts() for index in range(count)]


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return document


def _jobs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_there_is_a_configuration_for_two_shards() -> None:
    assert 2 in shard_counts()
    assert [shard_config(i, 2).name for i in range(2)] == ["shard-0-of-2.yml", "shard-1-of-2.yml"]


@pytest.mark.parametrize(("index", "count"), SHARDS)
def test_promtool_accepts_the_shard_with_its_rules(index: int, count: int) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is not installed (run scripts/install-system-deps.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [promtool, "check", "config", shard_config(index, count).name],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PROMETHEUS_DIR,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(SHARD_RULE_FILES)} rule files found" in result.stdout


@pytest.mark.parametrize(("index", "count"), SHARDS)
def test_a_shard_keeps_its_share_of_the_split_jobs(index: int, count: int) -> None:
    config = _load(shard_config(index, count))
    assert config["global"]["external_labels"] == {SHARD_LABEL: str(index)}
    for name, job in _jobs(config).items():
        relabel = job.get("relabel_configs", [])
        if name == "prometheus":
            own_name = {"target_label": "instance", "replacement": f"prometheus-shard-{index}"}
            assert relabel == [own_name]
            continue
        if name in EVERY_SHARD:
            assert relabel == [], name
            continue
        assert relabel == [
            {
                "source_labels": ["__address__"],
                "action": "hashmod",
                "modulus": count,
                "target_label": "__tmp_shard",
            },
            {"source_labels": ["__tmp_shard"], "action": "keep", "regex": str(index)},
        ], name


@pytest.mark.parametrize("count", shard_counts())
def test_the_shards_of_a_count_differ_only_in_their_number(count: int) -> None:
    def normalised(index: int) -> dict[str, Any]:
        config = copy.deepcopy(_load(shard_config(index, count)))
        config["global"]["external_labels"][SHARD_LABEL] = "K"
        for job in config["scrape_configs"]:
            for rule in job.get("relabel_configs", []):
                if rule.get("action") == "keep":
                    rule["regex"] = "K"
                if rule.get("target_label") == "instance":
                    rule["replacement"] = "K"
        return config

    first = normalised(0)
    assert all(normalised(index) == first for index in range(1, count))


@pytest.mark.parametrize(("index", "count"), SHARDS)
def test_a_shard_scrapes_what_prometheus_yml_scrapes(index: int, count: int) -> None:
    single, shard = _load(PROMETHEUS_CONFIG), _load(shard_config(index, count))
    assert shard["global"]["scrape_interval"] == single["global"]["scrape_interval"]
    assert shard["global"]["evaluation_interval"] == single["global"]["evaluation_interval"]
    assert shard["alerting"]["alertmanagers"] == single["alerting"]["alertmanagers"]
    shard_jobs = _jobs(shard)
    for name, job in _jobs(single).items():
        assert name in shard_jobs, f"shard {index} does not scrape {name}"
        for key in ("file_sd_configs", "honor_labels", "metrics_path"):
            assert shard_jobs[name].get(key) == job.get(key), (name, key)
    assert set(shard_jobs) - set(_jobs(single)) == {"thanos"}


@pytest.mark.parametrize(("index", "count"), SHARDS)
def test_the_shard_label_leaves_alerts_and_merges_in_thanos_query(index: int, count: int) -> None:
    config = _load(shard_config(index, count))
    assert config["alerting"]["alert_relabel_configs"] == [
        {"action": "labeldrop", "regex": SHARD_LABEL}
    ]
    assert SHARD_LABEL in REPLICA_LABELS
    assert SHARD_LABEL in ALERT_LABEL_DROP


def test_every_rule_file_runs_once_on_the_shards_or_in_the_ruler() -> None:
    rule_files = {path.name for path in RULES_DIR.glob("*.yml")}
    assert set(SHARD_RULE_FILES) | set(GLOBAL_RULE_FILES) == rule_files
    assert not set(SHARD_RULE_FILES) & set(GLOBAL_RULE_FILES)
    for index, count in SHARDS:
        loaded = _load(shard_config(index, count))["rule_files"]
        assert loaded == [f"rules/{name}" for name in SHARD_RULE_FILES]


def test_the_native_stack_replaces_only_the_remote_write_url() -> None:
    source = shard_config(0, 2)
    rendered = render_config(source, "http://127.0.0.1:1234/api/v1/receive")
    original = source.read_text(encoding="utf-8").splitlines()
    changed = [(a, b) for a, b in zip(original, rendered.splitlines(), strict=True) if a != b]
    assert len(changed) == 1
    assert re.fullmatch(r"\s+- url: http://127\.0\.0\.1:1234/api/v1/receive", changed[0][1])


def test_hashmod_computes_what_prometheus_does() -> None:
    # The expected values of Prometheus's own tests (model/relabel/relabel_test.go).
    assert hashmod("baz", 1000) == 976
    assert hashmod("foo\nbar", 1000) == 734
