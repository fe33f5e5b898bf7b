#!/usr/bin/env bash
# Builds the Collector from otel-collector/builder-config.yaml with the
# OpenTelemetry Collector Builder, into a cache keyed by the manifest's content.
# Prints the binary's path on stdout; progress goes to stderr.
# Does nothing (and takes well under a second) when that binary already exists.
# With --cached it never builds: it prints the cached binary's path or exits 3.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
manifest="$repo/otel-collector/builder-config.yaml"
builder_version="v0.165.0"   # keep equal to the manifest's component versions

cache_root="${OTEL_PIPELINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/otel-agents-pipeline}"
key="$(cat "$manifest" | sha256sum | cut -c1-16)"
build_dir="$cache_root/collector/$key"
binary="$build_dir/dist/otelcol-platform"

say() { printf '[build-collector] %s\n' "$*" >&2; }

if [[ -x "$binary" ]]; then
    say "cached: $binary"
    echo "$binary"
    exit 0
fi
if [[ "${1:-}" == "--cached" ]]; then
    say "not built yet for this manifest (make collector builds it)"
    exit 3
fi

command -v go >/dev/null || { say "error: Go is not installed (https://go.dev/doc/install)"; exit 1; }

# Module and build caches live beside the binary's cache so a rebuild after a
# manifest change reuses the downloads.
export GOMODCACHE="$cache_root/go/mod"
export GOCACHE="$cache_root/go/build"
export GOBIN="$cache_root/go/bin"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"   # never download a Go toolchain
export GOFLAGS="${GOFLAGS:-} -modcacherw"    # keep the cache deletable
mkdir -p "$build_dir" "$GOMODCACHE" "$GOCACHE" "$GOBIN"

start=$SECONDS
if [[ ! -x "$GOBIN/builder-$builder_version" ]]; then
    say "installing the Collector Builder $builder_version ($(go version | cut -d' ' -f3))"
    go install "go.opentelemetry.io/collector/cmd/builder@$builder_version"
    mv "$GOBIN/builder" "$GOBIN/builder-$builder_version"
fi

say "building the Collector from $manifest"
say "into $build_dir (the first build downloads modules and compiles for several minutes)"
cp "$manifest" "$build_dir/builder-config.yaml"
tmp_dist="$build_dir/dist.partial"
rm -rf "$tmp_dist" "$build_dir/dist"
sed 's#output_path: ./dist#output_path: ./dist.partial#' "$manifest" > "$build_dir/builder-config.yaml"
( cd "$build_dir" && "$GOBIN/builder-$builder_version" --config=builder-config.yaml ) >&2
# Rename only a complete build, so an interrupted one is never taken as cached.
mv "$tmp_dist" "$build_dir/dist"
say "built in $((SECONDS - start)) s: $binary"
"$binary" --version >&2
echo "$binary"
