"""The python snippets of README.md and docs/agents.md, run as written, into Prometheus.

Each snippet runs verbatim in a fresh Python process whose only settings are the
standard ones a user sets: OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_AGENTS_API_KEY (and
PREFECT_API_URL for a data agent). The names a snippet leaves to its reader (`upstream`,
`batch`, ...) are given real values, and after the snippet the process does what its
host would (calls on the channel, flow runs), then ends normally, which exports the
final values. Every metric the snippet's text promises must then be in Prometheus,
exactly, under the key's tenant.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stack.local import REPO, LocalStack
from stack.pki import self_signed_file

pytestmark = pytest.mark.e2e

Keys = tuple[Path, dict[str, str]]

_FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(document: str) -> list[str]:
    """The fenced python blocks of a Markdown file of the repository, in order."""
    return _FENCE.findall((REPO / document).read_text())


def free_names(source: str) -> set[str]:
    """Names the code reads without defining or importing them (nor builtins)."""
    tree = ast.parse(source)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.alias):
            defined.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            defined.add(node.name)
    return {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    } - defined


# What the processes give the names the snippets leave to their reader.
CONNECTOR_HOST = """
import grpc
from concurrent import futures

UPSTREAM = "upstream.Upstream"


def _send(request, context):
    if not request:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty payload")
    return b"ok"


_server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
_handler = grpc.unary_unary_rpc_method_handler(_send)
_server.add_generic_rpc_handlers(
    (grpc.method_handlers_generic_handler(UPSTREAM, {"Send": _handler}),)
)
_port = _server.add_secure_port(
    "127.0.0.1:0", grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP)
)
_server.start()
upstream = f"127.0.0.1:{_port}"
credentials = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
certificate_file = CERTIFICATE_FILE
"""

# The connector's own work: one Arrow IPC payload of 25 rows, one refused call.
CONNECTOR_WORK = """
import threading
import pyarrow as pa

_batch = pa.record_batch({"id": pa.array(range(25), pa.int64())})
_sink = pa.BufferOutputStream()
with pa.ipc.new_stream(_sink, _batch.schema) as _writer:
    _writer.write_batch(_batch)
PAYLOAD = _sink.getvalue().to_pybytes()
_call = channel.unary_unary(f"/{UPSTREAM}/Send")
assert _call(PAYLOAD, timeout=10) == b"ok"
try:
    _call(b"", timeout=10)
except grpc.RpcError as exc:
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
# Connectivity callbacks run in order on one thread: once ours saw READY, so did the watch.
_ready = threading.Event()
channel.subscribe(lambda state: state == grpc.ChannelConnectivity.READY and _ready.set())
assert _ready.wait(10)
print("PAYLOAD_BYTES", len(PAYLOAD))
"""

BATCH_HOST = """
import pyarrow as pa

batch = pa.record_batch({"id": pa.array(range(10), pa.int64()), "v": pa.array([1.5] * 10)})
print("BATCH_BYTES", batch.nbytes)
"""

# A flow defined before the snippet ("including flows defined earlier").
FLOW_HOST = """
from prefect import flow, task

_attempts = {"n": 0}


@task(retries=1, retry_delay_seconds=0)
def extract() -> int:
    _attempts["n"] += 1
    if _attempts["n"] == 1:
        raise ConnectionError("transient")
    return 3


@flow
def nightly(fail: bool = False) -> int:
    rows = extract()
    if fail:
        raise ValueError("bad input")
    return rows
"""

FLOW_WORK = """
assert nightly() == 3
assert nightly(fail=True, return_state=True).is_failed()
"""


@dataclass(frozen=True)
class Scenario:
    """Snippets run together in one process, and what they must produce."""

    script: str
    """The process's main script (a Prefect agent is named after it when nothing else does)."""
    document: str
    blocks: tuple[int, ...]
    free: frozenset[str]
    """The names the snippets leave to the reader, given by `host`."""
    host: str
    work: str
    tenant: str
    job: str
    resource: str = ""
    """OTEL_RESOURCE_ATTRIBUTES of the process, when it needs any."""


SCENARIOS = {
    "README connector": Scenario(
        "billing_connector.py",
        "README.md",
        (0, 2),
        frozenset({"upstream", "credentials", "certificate_file"}),
        CONNECTOR_HOST,
        CONNECTOR_WORK,
        "acme",
        "billing-connector",
    ),
    "README Prefect": Scenario(
        "nightly_etl.py",
        "README.md",
        (1,),
        frozenset(),
        FLOW_HOST,
        FLOW_WORK,
        "globex",
        "nightly_etl",
    ),
    "agents.md setup": Scenario(
        "orders_connector.py",
        "docs/agents.md",
        (0,),
        frozenset({"batch"}),
        BATCH_HOST,
        "",
        "acme",
        "orders-connector",
    ),
    "agents.md connector": Scenario(
        "connector.py",
        "docs/agents.md",
        (2, 1),
        frozenset({"upstream", "certificate_file"}),
        CONNECTOR_HOST,
        CONNECTOR_WORK,
        "globex",
        "billing-connector",
        # The README's connector has the same service name on this machine, hence by
        # default the same instance id, for another tenant; the Collector keys
        # target_info by job and instance, so that would be one target_info for two.
        "service.instance.id=billing-connector-of-globex",
    ),
    "agents.md Prefect": Scenario(
        "etl_agent.py",
        "docs/agents.md",
        (3,),
        frozenset(),
        FLOW_HOST,
        FLOW_WORK,
        "acme",
        "orders-etl",
    ),
}


def test_every_snippet_has_a_scenario() -> None:
    for document, count in (("README.md", 3), ("docs/agents.md", 4)):
        covered = {i for s in SCENARIOS.values() if s.document == document for i in s.blocks}
        assert covered == set(range(len(python_blocks(document)))) == set(range(count)), (
            f"{document} has python blocks that no scenario runs: add one"
        )


@pytest.fixture(scope="module")
def certificate_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A connector certificate that expires in 30 days."""
    return self_signed_file(tmp_path_factory.mktemp("connector") / "tls.pem", 30, "connector")


def run_scenario(
    scenario: Scenario, key: str, stack: LocalStack, tmp_path: Path, extra_env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run the scenario's snippets verbatim in a fresh process; its output."""
    blocks = python_blocks(scenario.document)
    snippets = [blocks[i] for i in scenario.blocks]
    # A snippet may use what an earlier one of the same run defined, nothing else unsaid.
    assert free_names("\n".join(snippets)) == scenario.free
    source = "\n".join([scenario.host, *snippets, scenario.work])
    script = tmp_path / scenario.script
    script.write_text(source)
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.gateway_grpc_endpoint,
        "OTEL_AGENTS_API_KEY": key,
        "PYTHONPATH": str(REPO),
        **({"OTEL_RESOURCE_ATTRIBUTES": scenario.resource} if scenario.resource else {}),
        **extra_env,
    }
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"{scenario.script} failed:\n{result.stderr[-3000:]}"
    return result


def _printed(output: str, label: str) -> int:
    [value] = re.findall(rf"^{label} (\d+)$", output, re.MULTILINE)
    return int(value)


class Prometheus:
    """Exact reads of one agent's series."""

    def __init__(self, stack: LocalStack, tenant: str, job: str) -> None:
        self.stack, self.selector = stack, f'job="{job}",tenant_id="{tenant}"'
        self.tenant = tenant

    def value(self, name: str, labels: str = "", timeout: float = 60) -> float:
        query = f"{name}{{{self.selector}{',' + labels if labels else ''}}}"
        result = self.stack.wait_for(query, lambda r: len(r) == 1, timeout=timeout)
        assert result[0]["metric"]["tenant_id"] == self.tenant
        return float(result[0]["value"][1])

    def absent(self, name: str) -> bool:
        return self.stack.query(f"{name}{{{self.selector}}}") == []


def _assert_connector(prom: Prometheus, payload_bytes: int) -> None:
    assert prom.value("connector_queries_processed_total") == 2
    assert prom.value("connector_bytes_sent_total") == payload_bytes
    assert prom.value("connector_records_sent_total") == 25
    assert prom.value("connector_errors_total", 'error_type="rejected"') == 1
    assert prom.value("connector_connected") == 1
    assert prom.value("target_info", 'service_version="2.4.1"') == 1
    assert prom.value("connector_uptime_seconds") > 0
    assert 28.9 < prom.value("connector_certificate_expiry_days") <= 30


def _assert_flows(prom: Prometheus) -> None:
    flow = 'flow="nightly"'
    assert prom.value("agent_flows_executed_total", flow) == 2
    assert prom.value("agent_flows_success_total", flow) == 1
    assert prom.value("agent_flows_failed_total", flow) == 1
    assert prom.value("agent_tasks_executed_total") == 2
    assert prom.value("agent_tasks_failed_total") == 0
    assert prom.value("agent_task_retries_total") == 1
    assert prom.value("agent_flow_duration_seconds_count") == 2
    assert 0 < prom.value("agent_last_flow_duration_seconds", flow) < 120
    assert prom.value("agent_uptime_seconds") > 0
    assert prom.value("agent_connected") == 1


def test_readme_connector(
    stack: LocalStack, tenant_keys: Keys, tmp_path: Path, certificate_file: Path
) -> None:
    scenario = SCENARIOS["README connector"]
    done = run_scenario(
        _with_certificate(scenario, certificate_file),
        tenant_keys[1][scenario.tenant],
        stack,
        tmp_path,
        {},
    )
    prom = Prometheus(stack, scenario.tenant, scenario.job)
    _assert_connector(prom, _printed(done.stdout, "PAYLOAD_BYTES"))
    # The custom counter of the next README snippet, on the same telemetry.
    assert prom.value("connector_upload_retries_total", 'reason="timeout"') == 1


def test_docs_connector_and_own_counter(
    stack: LocalStack, tenant_keys: Keys, tmp_path: Path, certificate_file: Path
) -> None:
    scenario = SCENARIOS["agents.md connector"]
    done = run_scenario(
        _with_certificate(scenario, certificate_file),
        tenant_keys[1][scenario.tenant],
        stack,
        tmp_path,
        {},
    )
    prom = Prometheus(stack, scenario.tenant, scenario.job)
    _assert_connector(prom, _printed(done.stdout, "PAYLOAD_BYTES"))
    assert prom.value("connector_uploads_total", 'destination="s3"') == 1


def test_docs_setup(stack: LocalStack, tenant_keys: Keys, tmp_path: Path) -> None:
    scenario = SCENARIOS["agents.md setup"]
    done = run_scenario(scenario, tenant_keys[1][scenario.tenant], stack, tmp_path, {})
    prom = Prometheus(stack, scenario.tenant, scenario.job)
    assert prom.value("connector_bytes_sent_total") == _printed(done.stdout, "BATCH_BYTES")
    assert prom.value("connector_records_sent_total") == 10
    assert prom.value("connector_queries_processed_total") == 0
    assert prom.value("connector_uptime_seconds") > 0


def test_readme_prefect_agent_is_named_after_its_script(
    stack: LocalStack, tenant_keys: Keys, tmp_path: Path, prefect_api: str
) -> None:
    scenario = SCENARIOS["README Prefect"]
    done = run_scenario(
        scenario,
        tenant_keys[1][scenario.tenant],
        stack,
        tmp_path,
        _prefect_env(prefect_api, tmp_path),
    )
    prom = Prometheus(stack, scenario.tenant, scenario.job)
    _assert_flows(prom)
    assert prom.value("target_info", 'service_version="1.4.0"') == 1
    [note] = [line for line in done.stderr.splitlines() if "Prefect agent" in line]
    assert "is named 'nightly_etl' after the main script" in note
    assert "OTEL_SERVICE_NAME" in note


def test_docs_prefect_agent(
    stack: LocalStack, tenant_keys: Keys, tmp_path: Path, prefect_api: str
) -> None:
    scenario = SCENARIOS["agents.md Prefect"]
    done = run_scenario(
        scenario,
        tenant_keys[1][scenario.tenant],
        stack,
        tmp_path,
        _prefect_env(prefect_api, tmp_path),
    )
    prom = Prometheus(stack, scenario.tenant, scenario.job)
    _assert_flows(prom)
    assert prom.value("target_info", 'service_version="1.4.0"') == 1
    assert "Prefect agent" not in done.stderr  # named and versioned: nothing to say


def _with_certificate(scenario: Scenario, path: Path) -> Scenario:
    host = scenario.host.replace("CERTIFICATE_FILE", repr(str(path)))
    return Scenario(**{**scenario.__dict__, "host": host})


def _prefect_env(api_url: str, tmp_path: Path) -> dict[str, Any]:
    return {"PREFECT_API_URL": api_url, "PREFECT_HOME": str(tmp_path / "prefect-home")}
