"""compose.yaml, checked without a Docker engine: schema, mounts, ports, versions.

Each test reads the deployed files themselves, so a rename on one side (a
Collector variable, a Prometheus target file, a gateway setting) fails here
rather than in a container nobody started.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import GatewaySettings
from scripts.compose_collectors import TARGETS_MOUNT, gateway_replicas, target_files
from scripts.compose_collectors import write as write_override
from stack.local import collector_name
from stack.shards import GLOBAL_RULE_FILES, evaluation_interval, shard_config
from stack.thanos import ALERT_LABEL_DROP, RECEIVE_TENANT_LABEL, REPLICA_LABELS

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
BUILDER_MANIFEST = REPO / "otel-collector" / "builder-config.yaml"
COLLECTOR_CONFIG = REPO / "otel-collector" / "config.yaml"
RECIPES = REPO / "otel-collector" / "recipes"
PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"
COMPOSE_TARGETS = REPO / "prometheus" / "targets" / "compose"
CONSTRAINTS = REPO / "constraints.txt"
DEMO_DOCKERFILE = REPO / "Dockerfile.demo"
THANOS_GO_MOD = REPO / "thanos" / "go.mod"
BALANCER_CONFIG = REPO / "balancer" / "nginx.conf"

COLLECTOR_IMAGE = "otel/opentelemetry-collector-contrib"
# The Collector's stable modules (the confmap providers) are versioned v1.x in
# the same release as the v0.x ones. Bumping the release means adding its pair
# here, from the release notes.
STABLE_MODULES_VERSION = {"0.165.0": "v1.71.0"}
LOOPBACK = {"127.0.0.1", "::1"}
# The collector image is distroless: nothing in it can run a health check.
NO_HEALTHCHECK = {"collector"}
# `gateway` is the balancer the agents connect to; gateway-1 and gateway-2 the replicas.
REPLICAS = ("gateway-1", "gateway-2")
CORE_SERVICES = {
    "gateway",
    *REPLICAS,
    "redis",
    "collector",
    "prometheus",
    "alertmanager",
    "grafana",
    "prefect",
}
# Demo agents run one process each: the container is as alive as the agent (the
# restart policy brings it back); whether it reports is what the dashboards show.
DEMO_SERVICES = {
    "demo-upstream": "scripts.demo_upstream",
    "demo-connector-acme": "scripts.demo_connector",
    "demo-connector-globex": "scripts.demo_connector",
    "demo-data-agent-acme": "scripts.demo_data_agent",
    "demo-data-agent-globex": "scripts.demo_data_agent",
}
# Profile thanos: past one Prometheus (docs/scaling.md).
SHARD_SERVICES = {"prometheus-shard-0": 0, "prometheus-shard-1": 1}
THANOS_COMPONENTS = {"thanos-receive": "receive", "thanos-query": "query", "thanos-rule": "rule"}
THANOS_SERVICES = set(SHARD_SERVICES) | set(THANOS_COMPONENTS)
THANOS_IMAGE = "thanosio/thanos"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml as data."""
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services of compose.yaml by name."""
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _volume_sources(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(type, source) of each volume, short syntax "SRC:DST[:MODE]" or long syntax."""
    sources = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source = volume.split(":", 1)[0]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            sources.append((kind, source))
        else:
            sources.append((volume["type"], volume.get("source", "")))
    return sources


def _port_bindings(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host IP, container port) of each published port; "" is every interface."""
    bindings = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            bindings.append((str(port.get("host_ip", "")), str(port["target"])))
            continue
        spec = str(port).split("/", 1)[0]  # drop "/tcp"
        if spec.startswith("["):  # "[::1]:9090:9090"
            host_ip, _, rest = spec[1:].partition("]:")
            bindings.append((host_ip, rest.split(":")[-1]))
            continue
        parts = spec.split(":")
        bindings.append((parts[0] if len(parts) == 3 else "", parts[-1]))
    return bindings


def _container_mounts(service: dict[str, Any]) -> list[str]:
    """Container paths of a service's volumes."""
    targets = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            targets.append(volume.split(":")[1])
        else:
            targets.append(volume["target"])
    return targets


def test_compose_file_follows_the_compose_specification() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    assert checker.exists(), f"{checker} is missing: install the dev extra (make setup)"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_bind_mounted_host_path_exists(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    missing = []
    binds = 0
    for name, service in services.items():
        for kind, source in _volume_sources(service):
            if kind == "bind":
                binds += 1
                if not (REPO / source).expanduser().exists():
                    missing.append(f"{name}: {source}")
            elif kind == "volume":
                assert source in (compose.get("volumes") or {}), (
                    f"{name} uses volume {source!r}, not declared under top-level volumes"
                )
        build = service.get("build")
        if build is not None:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            if not (context / (dockerfile or "Dockerfile")).is_file():
                missing.append(f"{name}: build {context / (dockerfile or 'Dockerfile')}")
    assert binds > 0, "no bind mounts found: the parser no longer matches compose.yaml"
    assert not missing, f"bind-mounted paths missing from the repo: {missing}"


def test_only_the_gateway_publishes_ports_on_all_interfaces(
    services: dict[str, dict[str, Any]],
) -> None:
    gateway = _port_bindings(services["gateway"])
    assert sorted(gateway) == [("", "4317"), ("", "4318")]
    for name in ("collector", "redis", *REPLICAS):
        assert _port_bindings(services[name]) == [], name
    for name, service in services.items():
        if name == "gateway":
            continue
        exposed = [b for b in _port_bindings(service) if b[0] not in LOOPBACK]
        assert not exposed, f"{name} publishes {exposed} beyond loopback"


def test_collector_image_is_the_release_of_the_builder_manifest(
    services: dict[str, dict[str, Any]],
) -> None:
    manifest = yaml.safe_load(BUILDER_MANIFEST.read_text(encoding="utf-8"))
    release = manifest["dist"]["version"]
    image, _, tag = services["collector"]["image"].rpartition(":")
    assert image == COLLECTOR_IMAGE
    assert tag == release, f"compose runs {tag}, builder-config.yaml builds {release}"

    assert release in STABLE_MODULES_VERSION, (
        f"add the confmap providers' v1 version of release {release} to STABLE_MODULES_VERSION"
    )
    modules = [
        entry["gomod"].split()
        for section in (
            "receivers",
            "processors",
            "exporters",
            "extensions",
            "connectors",
            "providers",
        )
        for entry in manifest.get(section) or []
    ]
    assert len(modules) >= 6, f"expected the pipeline's components, found {modules}"
    wrong = []
    for module, version in modules:
        stable = "/confmap/provider/" in module
        expected = STABLE_MODULES_VERSION[release] if stable else f"v{release}"
        if version != expected:
            wrong.append(f"{module} {version} (expected {expected})")
    assert not wrong, f"components off the {release} release: {wrong}"


def test_every_service_restarts_and_has_a_health_check(
    services: dict[str, dict[str, Any]],
) -> None:
    assert set(services) == CORE_SERVICES | set(DEMO_SERVICES) | THANOS_SERVICES
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        if name in NO_HEALTHCHECK or name in DEMO_SERVICES:
            assert "healthcheck" not in service, name
        elif "build" in service:
            assert "HEALTHCHECK" in dockerfile, name
            assert "/healthz" in dockerfile, name
        else:
            assert service["healthcheck"]["test"], name


def test_collector_variables_are_the_ones_its_config_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    config = "".join(
        path.read_text(encoding="utf-8") for path in (COLLECTOR_CONFIG, *RECIPES.glob("*.yaml"))
    )
    environment = services["collector"]["environment"]
    assert environment, "the collector needs 0.0.0.0 binds in a container"
    unread = [name for name in environment if f"${{env:{name}" not in config]
    assert not unread, f"otel-collector/config.yaml and its recipes do not read {unread}"


def test_collector_runs_config_yaml_then_the_recipe_named(
    services: dict[str, dict[str, Any]],
) -> None:
    collector = services["collector"]
    mounts = dict(v.removesuffix(":ro").split(":") for v in collector["volumes"])
    assert mounts == {
        "./otel-collector/config.yaml": "/etc/otelcol-contrib/config.yaml",
        "./otel-collector/recipes": "/etc/otelcol-contrib/recipes",
    }
    base, recipe = collector["command"]
    assert base == "--config=/etc/otelcol-contrib/config.yaml"
    assert recipe == "--config=/etc/otelcol-contrib/recipes/${COLLECTOR_RECIPE:-none}.yaml"
    # The default adds nothing.
    none = yaml.safe_load((RECIPES / "none.yaml").read_text(encoding="utf-8"))
    assert none is None


def test_gateway_variables_name_settings_and_mounted_files(
    services: dict[str, dict[str, Any]],
) -> None:
    assert gateway_replicas(services) == list(REPLICAS)
    for name in REPLICAS:
        gateway = services[name]
        environment = gateway["environment"]
        fields = set(GatewaySettings.model_fields)
        unknown = [n for n in environment if n.removeprefix("GATEWAY_").lower() not in fields]
        assert not unknown, f"{name}: not gateway settings: {unknown}"
        tenants_file = Path(environment["GATEWAY_TENANTS_FILE"])
        mounts = [Path(target) for target in _container_mounts(gateway)]
        assert any(tenants_file.is_relative_to(m) for m in mounts), (
            f"{name}: {tenants_file} is not inside a mount of the gateway: {mounts}"
        )
        assert environment["GATEWAY_COLLECTOR_ENDPOINT"].split(":")[0] in services
        # The settings load as the replica would load them.
        GatewaySettings(**{k.removeprefix("GATEWAY_").lower(): v for k, v in environment.items()})


def test_the_replicas_share_one_redis_the_tenants_file_and_every_setting(
    services: dict[str, dict[str, Any]],
) -> None:
    first, second = (services[name] for name in REPLICAS)
    # One store, a service of this file, which both wait for.
    urls = {services[name]["environment"]["GATEWAY_STATE_URL"] for name in REPLICAS}
    [url] = urls
    host, _, port = url.removeprefix("redis://").partition("/")[0].partition(":")
    assert host == "redis", url
    assert port == "6379", url
    redis = services["redis"]
    assert redis["image"].rpartition(":")[0] in ("redis", "valkey/valkey")
    for name in REPLICAS:
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}, name

    # The same image, settings and tenants file; a name and a data volume of its own.
    names = {name: services[name]["environment"]["GATEWAY_STATE_REPLICA_NAME"] for name in REPLICAS}
    assert names == {name: name for name in REPLICAS}
    own = ("environment", "volumes")
    assert {k: v for k, v in first.items() if k not in own} == {
        k: v for k, v in second.items() if k not in own
    }
    assert {k: v for k, v in first["environment"].items() if k != "GATEWAY_STATE_REPLICA_NAME"} == {
        k: v for k, v in second["environment"].items() if k != "GATEWAY_STATE_REPLICA_NAME"
    }
    binds = [{v for v in services[name]["volumes"] if v.startswith("./")} for name in REPLICAS]
    assert binds[0] == binds[1] == {"./config:/etc/otel-gateway:ro"}
    data = [
        {v.split(":")[0] for v in services[name]["volumes"] if not v.startswith("./")}
        for name in REPLICAS
    ]
    assert data == [{"gateway-1-data"}, {"gateway-2-data"}], "each replica its own fleet file"

    # Prometheus scrapes each replica's /metrics.
    port = first["environment"]["GATEWAY_METRICS_PORT"]
    [group] = json.loads((COMPOSE_TARGETS / "gateway.json").read_text())
    assert group["targets"] == [f"{name}:{port}" for name in REPLICAS]


def _balancer_upstreams(config: str) -> dict[str, list[str]]:
    """upstream name → its servers (host:port), from balancer/nginx.conf."""
    upstreams: dict[str, list[str]] = {}
    for name, body in re.findall(r"upstream\s+(\S+)\s*\{(.*?)\}", config, re.S):
        upstreams[name] = re.findall(r"^\s*server\s+(\S+)", body, re.M)
    return upstreams


def test_the_balancer_spreads_both_ports_over_every_replica(
    services: dict[str, dict[str, Any]],
) -> None:
    balancer = services["gateway"]
    assert balancer["image"].rpartition(":")[0] == "nginx"
    assert f"./{BALANCER_CONFIG.relative_to(REPO)}:/etc/nginx/nginx.conf:ro" in balancer["volumes"]
    config = BALANCER_CONFIG.read_text(encoding="utf-8")
    upstreams = _balancer_upstreams(config)
    servers = re.findall(r"server\s*\{\s*listen\s+(\d+);\s*proxy_pass\s+(\S+);", config)
    published = sorted(port for _, port in _port_bindings(balancer))
    assert sorted(port for port, _ in servers) == published
    for port, upstream in servers:
        # Every replica, on the port the balancer listens on (the replicas' own).
        assert upstreams[upstream] == [f"{name}:{port}" for name in REPLICAS], upstream
    # L4 (stream), not an HTTP proxy: gRPC's HTTP/2 passes through untouched.
    assert re.search(r"^stream\s*\{", config, re.M)
    assert not re.search(r"^http\s*\{", config, re.M)
    # The replicas see the balancer's address only: their caps per address are off,
    # and the balancer caps HTTP connections per address as a replica would.
    for name in REPLICAS:
        environment = services[name]["environment"]
        assert environment["GATEWAY_MAX_GRPC_CALLS_PER_PEER"] == "0", name
        assert environment["GATEWAY_MAX_HTTP_CONNECTIONS_PER_PEER"] == "0", name
        assert environment["GATEWAY_AUTH_FAILURE_LIMIT"] == "0", name
    default_cap = GatewaySettings.model_fields["max_http_connections_per_peer"].default
    assert f"limit_conn per_address {default_cap};" in config
    # Room for as many agents as a replica's open files allow.
    assert balancer["ulimits"] == services[REPLICAS[0]]["ulimits"]


@pytest.mark.parametrize(
    "prometheus_config",
    [PROMETHEUS_CONFIG, *(shard_config(i, len(SHARD_SERVICES)) for i in SHARD_SERVICES.values())],
    ids=lambda path: path.name,
)
def test_prometheus_target_files_name_compose_services(
    services: dict[str, dict[str, Any]], prometheus_config: Path
) -> None:
    config = yaml.safe_load(prometheus_config.read_text(encoding="utf-8"))
    sources = [*config["scrape_configs"], *config["alerting"]["alertmanagers"]]
    target_files = [
        path
        for source in sources
        for sd in source.get("file_sd_configs", [])
        for path in sd["files"]
    ]
    assert "targets/alertmanager.json" in target_files, "prometheus.yml sends alerts nowhere"
    assert target_files, "prometheus.yml no longer reads file-based targets"
    for path in target_files:
        assert path.startswith("targets/"), f"{path}: compose mounts only targets/"
        document = json.loads((COMPOSE_TARGETS / path.removeprefix("targets/")).read_text())
        for group in document:
            for target in group["targets"]:
                host = target.rsplit(":", 1)[0]
                assert host in services or host == "localhost", f"{path}: {target}"


def test_gateway_image_exposes_what_compose_publishes(
    services: dict[str, dict[str, Any]],
) -> None:
    lines = (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines()
    exposed = {port for line in lines if line.startswith("EXPOSE ") for port in line.split()[1:]}
    # The balancer publishes the replicas' ports, each forwarded to the same port.
    published = {port for _, port in _port_bindings(services["gateway"])}
    assert exposed == published
    for name in REPLICAS:
        assert services[name]["build"]["dockerfile"] == "Dockerfile", name
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "the gateway image runs as root"
    assert users[-1] not in {"root", "0"}


def test_images_are_pinned_to_a_release(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image, _, tag = service["image"].rpartition(":")
        assert image, f"{name}: {service['image']} has no tag"
        assert re.fullmatch(r"v?\d+\.\d+\.\d+(-python3\.\d+)?", tag), f"{name}: {tag}"


def test_prefect_server_is_the_release_the_agents_pin(services: dict[str, dict[str, Any]]) -> None:
    # A Prefect client must not be newer than its server.
    pins = dict(
        line.split("==", 1)
        for line in CONSTRAINTS.read_text(encoding="utf-8").split()
        if "==" in line
    )
    tag = services["prefect"]["image"].rpartition(":")[2]
    assert tag == f"{pins['prefect']}-python3.11"
    assert "Dockerfile.demo" in services["demo-data-agent-acme"]["build"]["dockerfile"]


def test_data_volumes_keep_each_stateful_service(services: dict[str, dict[str, Any]]) -> None:
    data_paths = {
        "prometheus": "/prometheus",
        "alertmanager": "/alertmanager",
        "grafana": "/var/lib/grafana",
        "prefect": "/var/lib/prefect",
        "gateway-1": "/var/lib/otel-gateway",
        "gateway-2": "/var/lib/otel-gateway",
        "redis": "/data",
        "prometheus-shard-0": "/prometheus",
        "prometheus-shard-1": "/prometheus",
        "thanos-receive": "/var/thanos/receive",
        "thanos-rule": "/var/thanos/rule",
    }
    for name, path in data_paths.items():
        volumes = [v for v in services[name]["volumes"] if v.split(":")[1] == path]
        assert volumes, f"{name} keeps {path} in no volume"
        assert not volumes[0].startswith((".", "/")), f"{name}: {volumes[0]} is a bind mount"
        assert not volumes[0].endswith(":ro"), f"{name}: {volumes[0]} is read-only"


def test_services_read_their_config_from_the_mounted_repo_files(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in REPLICAS:
        fleet_state = Path(services[name]["environment"]["GATEWAY_FLEET_STATE_FILE"])
        writable = [
            Path(v.split(":")[1]) for v in services[name]["volumes"] if not v.endswith(":ro")
        ]
        assert any(fleet_state.is_relative_to(m) for m in writable), f"{name}: not writable"

    alertmanager = services["alertmanager"]
    [config] = [
        a.split("=", 1)[1] for a in alertmanager["command"] if a.startswith("--config.file")
    ]
    assert "./alertmanager:" + str(Path(config).parent) + ":ro" in alertmanager["volumes"]
    assert (REPO / "alertmanager" / Path(config).name).is_file()
    assert "--cluster.listen-address=" in alertmanager["command"], "single instance: no gossip"


def test_demo_agents_run_only_in_the_demo_profile_and_send_to_the_gateway(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if name not in DEMO_SERVICES:
            expected = ["thanos"] if name in THANOS_SERVICES else None
            assert service.get("profiles") == expected, name
            continue
        assert service["profiles"] == ["demo"], name
        assert service["build"]["dockerfile"] == DEMO_DOCKERFILE.name, name
        assert service["command"] == [DEMO_SERVICES[name]], name
        module = REPO / (DEMO_SERVICES[name].replace(".", "/") + ".py")
        assert module.is_file(), f"{name} runs {DEMO_SERVICES[name]}, but {module} is missing"
        environment = service["environment"]
        upstream = environment["DEMO_UPSTREAM_ADDRESS"].rpartition(":")[0]
        if name == "demo-upstream":
            assert upstream == "0.0.0.0", "the upstream must listen on the compose network"
            continue
        assert upstream in services, f"{name}: upstream {upstream} is no service"
        host, _, port = (
            environment["OTEL_EXPORTER_OTLP_ENDPOINT"].removeprefix("http://").partition(":")
        )
        assert host == "gateway", name
        assert port == "4317", name
        assert environment["OTEL_SERVICE_NAME"] == name, name
        assert environment["OTEL_AGENTS_API_KEY"].startswith("${DEMO_"), name


def test_demo_image_build_context_holds_what_it_copies() -> None:
    ignore = (REPO / "Dockerfile.demo.dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = [
        source.rstrip("/")
        for line in DEMO_DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    ]
    assert copied, "Dockerfile.demo copies nothing"
    assert set(copied) <= allowed, f"not in the build context: {set(copied) - allowed}"
    assert all((REPO / source).exists() for source in copied)


# -- profile thanos ---------------------------------------------------------------------


def _flags(service: dict[str, Any], name: str) -> list[str]:
    """The values of every `--name=value` in a service's command."""
    return [a.split("=", 1)[1] for a in service["command"] if a.startswith(f"--{name}=")]


def _listen_port(service: dict[str, Any], flag: str) -> str:
    [address] = _flags(service, flag)
    return address.rpartition(":")[2]


def test_thanos_image_is_the_release_thanos_go_mod_builds(
    services: dict[str, dict[str, Any]],
) -> None:
    requires = [line.split() for line in THANOS_GO_MOD.read_text(encoding="utf-8").splitlines()]
    [version] = [words[1] for words in requires if words[:1] == ["github.com/thanos-io/thanos"]]
    for name, command in THANOS_COMPONENTS.items():
        assert services[name]["image"] == f"{THANOS_IMAGE}:{version}", name
        assert services[name]["command"][0] == command, name


def test_prometheus_shards_run_the_repo_shard_files_like_prometheus(
    services: dict[str, dict[str, Any]],
) -> None:
    prometheus = services["prometheus"]
    for name, index in SHARD_SERVICES.items():
        shard = services[name]
        assert shard["image"] == prometheus["image"], name
        [config] = _flags(shard, "config.file")
        assert config == f"/etc/prometheus/{shard_config(index, len(SHARD_SERVICES)).name}"
        # The same mounts as prometheus (rules, compose targets), its own data volume.
        assert shard["volumes"][:2] == prometheus["volumes"][:2], name


def test_shards_remote_write_to_the_receive_service(services: dict[str, dict[str, Any]]) -> None:
    receive = services["thanos-receive"]
    for index in SHARD_SERVICES.values():
        config = yaml.safe_load(shard_config(index, len(SHARD_SERVICES)).read_text())
        [target] = config["remote_write"]
        url = target["url"]
        assert url == (
            f"http://thanos-receive:{_listen_port(receive, 'remote-write.address')}/api/v1/receive"
        )


def test_thanos_runs_as_the_native_stack_does(services: dict[str, dict[str, Any]]) -> None:
    receive, query, rule = (services[name] for name in THANOS_COMPONENTS)
    grpc = {name: _listen_port(services[name], "grpc-address") for name in THANOS_COMPONENTS}
    http = {name: _listen_port(services[name], "http-address") for name in THANOS_COMPONENTS}

    assert _flags(receive, "receive.tenant-label-name") == [RECEIVE_TENANT_LABEL]
    assert _flags(query, "query.replica-label") == list(REPLICA_LABELS)
    [endpoints] = _flags(query, "endpoint.sd-config")
    assert [e["address"] for e in yaml.safe_load(endpoints)["endpoints"]] == [
        f"thanos-receive:{grpc['thanos-receive']}",
        f"thanos-rule:{grpc['thanos-rule']}",
    ]

    mounts = dict(v.split(":")[:2] for v in rule["volumes"] if v.startswith("./"))
    rules_dir = Path(mounts["./prometheus/rules"])
    assert _flags(rule, "rule-file") == [str(rules_dir / name) for name in GLOBAL_RULE_FILES]
    assert _flags(rule, "eval-interval") == [evaluation_interval()]
    assert _flags(rule, "query") == [f"http://thanos-query:{http['thanos-query']}"]
    assert _flags(rule, "alert.label-drop") == list(ALERT_LABEL_DROP)
    [alertmanager] = _flags(rule, "alertmanagers.url")
    assert alertmanager == "http://alertmanager:9093"
    assert "alertmanager:9093" in (COMPOSE_TARGETS / "alertmanager.json").read_text()
    for component in (receive, query, rule):
        assert _flags(component, "http-grace-period") == ["5s"]


# -- N Collectors (scripts/compose_collectors.py) ----------------------------------------


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` applied to `base` as compose merges files: maps merged key by key,
    a service's volumes replaced by mount target, other values replaced."""
    merged = copy.deepcopy(base)
    services = merged["services"]
    for name, changes in override["services"].items():
        service = services.setdefault(name, {})
        for key, value in changes.items():
            if key == "volumes":
                targets = {str(v).split(":")[1] for v in value}
                kept = [v for v in service.get(key, []) if str(v).split(":")[1] not in targets]
                service[key] = kept + list(value)
            elif isinstance(value, dict):
                service[key] = {**service.get(key, {}), **value}
            else:
                service[key] = value
    return merged


def _target_groups(service: dict[str, Any], job: str) -> list[dict[str, Any]]:
    """The groups of target file `job`.json that `service` mounts at its targets."""
    [source] = [v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == TARGETS_MOUNT]
    directory = Path(source) if Path(source).is_absolute() else REPO / source
    groups: list[dict[str, Any]] = json.loads((directory / f"{job}.json").read_text())
    return groups


def test_compose_targets_name_their_one_collector() -> None:
    # What compose_collectors writes for one Collector is what compose.yaml mounts.
    for name, document in target_files(1).items():
        assert json.loads((COMPOSE_TARGETS / name).read_text()) == document, name


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_the_override_runs_n_collectors_and_prometheus_scrapes_each(
    compose: dict[str, Any], tmp_path: Path, count: int
) -> None:
    path = write_override(count, tmp_path)
    override = yaml.safe_load(path.read_text(encoding="utf-8"))
    merged = _merged(compose, override)
    services = merged["services"]
    names = [collector_name(index) for index in range(count)]

    # Every Collector runs as compose.yaml's `collector` does.
    collectors = sorted(n for n in services if n == "collector" or n.startswith("collector-"))
    assert collectors == sorted(names)
    for name in names:
        assert services[name] == compose["services"]["collector"], name

    # Each gateway replica sends to each of them, once, and starts after them.
    for replica in REPLICAS:
        gateway = services[replica]
        settings = GatewaySettings(
            collector_endpoint=gateway["environment"]["GATEWAY_COLLECTOR_ENDPOINT"]
        )
        endpoints = settings.collector_endpoints
        assert [e.rsplit(":", 1)[0] for e in endpoints] == names
        assert {e.rsplit(":", 1)[1] for e in endpoints} == {"4317"}
        assert set(gateway["depends_on"]) == {*names, "redis"}, replica
    assert "0.0.0.0:4317" in services["collector"]["environment"]["COLLECTOR_OTLP_ENDPOINT"]

    # Every Prometheus (the single one and the thanos profile's shards) scrapes every
    # Collector and its telemetry, each target labelled with its Collector's name.
    readers = [n for n in services if n == "prometheus" or n in SHARD_SERVICES]
    assert len(readers) == 1 + len(SHARD_SERVICES)
    for reader in readers:
        for job, port in (("collector", "8889"), ("collector-telemetry", "8888")):
            groups = _target_groups(services[reader], job)
            listed = {g["targets"][0]: g["labels"] for g in groups if len(g["targets"]) == 1}
            assert len(listed) == len(groups) == count, (reader, job, groups)
            assert listed == {
                f"{name}:{port}": {"component": job, "collector": name} for name in names
            }
        # The other target files are compose's own.
        for other in ("gateway", "alertmanager", "prometheus", "thanos"):
            own = json.loads((COMPOSE_TARGETS / f"{other}.json").read_text())
            assert _target_groups(services[reader], other) == own, (reader, other)

    # The merged file is still a valid compose file.
    merged_file = tmp_path / "merged.yaml"
    merged_file.write_text(yaml.safe_dump(merged), encoding="utf-8")
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(merged_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_default_override_path_is_relative_to_the_repository(tmp_path: Path) -> None:
    # Compose resolves an override's paths against the first file's directory.
    inside = REPO / ".run" / "test-compose-collectors"
    try:
        path = write_override(2, inside)
        override = yaml.safe_load(path.read_text(encoding="utf-8"))
        [mount] = override["services"]["prometheus"]["volumes"]
        assert mount == f"./.run/test-compose-collectors/targets:{TARGETS_MOUNT}:ro"
        assert "-f .run/test-compose-collectors/compose.yaml" in path.read_text()
    finally:
        shutil.rmtree(inside, ignore_errors=True)


@pytest.mark.parametrize("targets", ["compose", "override"])
def test_promtool_accepts_prometheus_yml_with_the_compose_targets(
    tmp_path: Path, targets: str
) -> None:
    # promtool reads the file_sd files it finds beside the config and checks their labels.
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is not installed (run scripts/install-system-deps.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    source = (
        COMPOSE_TARGETS if targets == "compose" else write_override(3, tmp_path).parent / "targets"
    )
    home = tmp_path / "prometheus"
    home.mkdir()
    (home / "prometheus.yml").symlink_to(PROMETHEUS_CONFIG)
    (home / "rules").symlink_to(PROMETHEUS_CONFIG.parent / "rules")
    (home / "targets").symlink_to(source)
    result = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=home,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "does not exist" not in output, output
