#!/usr/bin/env bash
# Build actionlint (the GitHub Actions workflow linter) from the Go module proxy into a cached bin folder, as
# hack/cluster/build.sh does for the control plane: keyed by version, built once. Prints the binary's path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VERSION="${ACTIONLINT_VERSION:-v1.7.12}"
BIN="${TOOLS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/distillctl/tools}"  # per user: a fresh clone reuses it
binary="$BIN/actionlint-$VERSION"
if [ ! -x "$binary" ]; then
  command -v go >/dev/null || { echo "actionlint.sh: needs Go (https://go.dev/dl) to build actionlint" >&2; exit 1; }
  mkdir -p "$BIN"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  GOBIN="$tmp" GOFLAGS=-mod=mod go install "github.com/rhysd/actionlint/cmd/actionlint@$VERSION" >&2
  mv -f "$tmp/actionlint" "$binary"
fi
echo "$binary"
