#!/usr/bin/env bash
# Builds Thanos from the wrapper module in thanos/ (go.mod, go.sum), into a
# cache keyed by those files' content and the build flags.
# Prints the binary's path on stdout; progress goes to stderr.
# Does nothing (and takes well under a second) when that binary already exists.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
wrapper="$repo/thanos"
# Thanos's go.mod asks for a newer Go than the machine's; this is the one
# toolchain we use, fetched by the go command from the module proxy.
toolchain="go1.27.3"
# The tags of Thanos's own .promu.yml. Without slicelabels it starts, then
# panics on its first gRPC call (index out of range in grpc's buffer pool);
# netgo keeps name resolution in Go.
tags="netgo,slicelabels"

cache_root="${OTEL_PIPELINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/otel-agents-pipeline}"
key="$( { cat "$wrapper/go.mod" "$wrapper/go.sum"; echo "$toolchain $tags"; } | sha256sum | cut -c1-16)"
build_dir="$cache_root/thanos/$key"
binary="$build_dir/bin/thanos"

say() { printf '[build-thanos] %s\n' "$*" >&2; }

if [[ -x "$binary" ]]; then
    say "cached: $binary"
    echo "$binary"
    exit 0
fi

command -v go >/dev/null || { say "error: Go is not installed (https://go.dev/doc/install)"; exit 1; }

# Module and build caches are the ones build-collector.sh uses, so the two
# builds share their downloads (the toolchain lands in the module cache too).
export GOMODCACHE="$cache_root/go/mod"
export GOCACHE="$cache_root/go/build"
export GOTOOLCHAIN="$toolchain"
export GOFLAGS="${GOFLAGS:-} -modcacherw"   # keep the cache deletable
export CGO_ENABLED=0                        # a static binary, no C compiler needed
mkdir -p "$GOMODCACHE" "$GOCACHE"

# One build per key at a time: a second caller waits, then finds the binary.
mkdir -p "$cache_root/thanos"
exec 9>"$build_dir.lock"
flock 9
if [[ -x "$binary" ]]; then
    say "built meanwhile: $binary"
    echo "$binary"
    exit 0
fi

start=$SECONDS
if ! go_version="$(cd "$wrapper" && go version 2>&1)" || [[ "$go_version" != *"go version $toolchain "* ]]; then
    say "error: could not get the Go toolchain $toolchain (needed by thanos/go.mod) from the"
    say "module proxy (GOPROXY=$(GOTOOLCHAIN=local go env GOPROXY)); the go command said:"
    printf '%s\n' "$go_version" | sed 's/^/    /' >&2
    exit 1
fi

version="$(awk '$1 == "github.com/thanos-io/thanos" { print $2 }' "$wrapper/go.mod")"
[[ -n "$version" ]] || { say "error: $wrapper/go.mod requires no github.com/thanos-io/thanos"; exit 1; }

say "building Thanos $version with $toolchain, tags $tags"
say "into $build_dir (the first build downloads modules and compiles for several minutes)"
# Build from a copy, so that an edit of thanos/ during the build cannot end up
# under a key computed from other content.
rm -rf "$build_dir"
mkdir -p "$build_dir/src" "$build_dir/bin.partial"
cp "$wrapper/go.mod" "$wrapper/go.sum" "$build_dir/src/"
(
    cd "$build_dir/src"
    go build -mod=readonly -trimpath -tags "$tags" \
        -ldflags "-s -w -X github.com/prometheus/common/version.Version=${version#v}" \
        -o "$build_dir/bin.partial/thanos" github.com/thanos-io/thanos/cmd/thanos
) >&2 || { say "error: building Thanos failed (the go command's messages are above)"; exit 1; }
# Rename only a complete build, so an interrupted one is never taken as cached.
mv "$build_dir/bin.partial" "$build_dir/bin"
say "built in $((SECONDS - start)) s: $binary"
"$binary" --version >&2
echo "$binary"
