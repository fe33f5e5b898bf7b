# Entry points. Quick start: `make demo` runs the pipeline with demo agents,
# `make test` runs every check. Both set up what is missing first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo thanos-demo test lint unit e2e bench bench-isolation collector thanos loadgen system-deps clean

setup: $(VENV)/.installed collector thanos loadgen system-deps

# The environment is rebuilt when the dependency list or the pins change.
$(VENV)/.installed: pyproject.toml constraints.txt
	@echo "[setup] Python environment in $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,prefect]'
	@touch $@

collector:
	@scripts/build-collector.sh >/dev/null

# Thanos Receive, Query and Ruler past one Prometheus (thanos/, stack/thanos.py);
# the first build takes several minutes, then it is cached.
thanos:
	@scripts/build-thanos.sh >/dev/null

# The Go load generator of the overload test and the benchmarks (bench/loadgen).
loadgen: $(VENV)/.installed
	@$(BIN)/python -m bench.loadgen >/dev/null

system-deps:
	@scripts/install-system-deps.sh

# `make demo COLLECTORS=3`: the gateway spreads the agents over 3 Collectors
# (docs/scaling.md, "Sharded Collectors"); one when COLLECTORS is not set.
# `make demo GATEWAY_WORKERS=2`: two gateway workers sharing their state in a Redis
# of the demo's own (docs/scaling.md, "Gateway replicas"); one process, no Redis,
# when GATEWAY_WORKERS is not set.
# It builds only what it runs: no Thanos, no load generator.
demo: $(VENV)/.installed collector system-deps
	@$(BIN)/python -m scripts.demo $(if $(COLLECTORS),--collectors $(COLLECTORS)) \
		$(if $(GATEWAY_WORKERS),--gateway-workers $(GATEWAY_WORKERS))

# The pipeline past one Prometheus: Prometheus shards and Thanos (docs/scaling.md).
thanos-demo: $(VENV)/.installed collector thanos system-deps
	@$(BIN)/python -m scripts.thanos_demo

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	promtool check config prometheus/prometheus.yml
	promtool check config prometheus/shard-*-of-*.yml
	promtool check rules prometheus/rules/*.yml
	promtool test rules prometheus/tests/*.yml
	amtool check-config alertmanager/alertmanager.yml
	scripts/validate-collector-configs.sh

unit: $(VENV)/.installed
	$(BIN)/pytest -m "not e2e"

e2e: setup
	$(BIN)/pytest -m e2e

test: setup lint
	$(BIN)/pytest

# The benchmark suite (about 35 minutes; figures in bench/results, docs/benchmarks.md).
bench: setup
	@$(BIN)/python -m bench

# Tenant B's exports under each attack of a hostile tenant (about 3 minutes;
# docs/reliability.md, "Hostile tenants").
bench-isolation: setup
	@$(BIN)/python -m bench.bench_isolation

clean:
	rm -rf .run test-artifacts .pytest_cache .mypy_cache .ruff_cache
