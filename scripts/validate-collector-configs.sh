#!/usr/bin/env bash
# Checks otel-collector/config.yaml alone and merged with each routing recipe
# (otel-collector/recipes/*.yaml, docs/routing.md) with the Collector's own
# `validate` command: component names, settings and every OTTL condition.
# Part of `make lint`, which stays fast: it uses the Collector already built
# (`make collector` or `make setup`; `make test` sets up first). Without one it
# says so and passes, except with CI=true, where it fails.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
config="$repo/otel-collector/config.yaml"

if ! binary="$("$repo/scripts/build-collector.sh" --cached 2>/dev/null)"; then
    echo "[validate-collector-configs] not validated: the Collector is not built (make collector)" >&2
    [[ "${CI:-}" != "true" ]]
    exit
fi

"$binary" validate --config="$config"
for recipe in "$repo"/otel-collector/recipes/*.yaml; do
    "$binary" validate --config="$config" --config="$recipe" \
        || { echo "[validate-collector-configs] invalid: config.yaml + ${recipe#"$repo"/}" >&2; exit 1; }
done
echo "[validate-collector-configs] config.yaml alone and with each of $(ls "$repo"/otel-collector/recipes/*.yaml | wc -l) recipes: valid"
