#!/usr/bin/env bash
# Build the local Kubernetes control plane used by the tests (tests/cluster):
# kube-apiserver/controller-manager/scheduler (one multi-call binary `kube`),
# etcd, the JobSet and Kueue controllers, kwok and helm, and the fake-gcs-server
# Cloud Storage emulator (gs:// outputs in tests), from small Go modules
# under hack/cluster/ whose go.mod files pin the upstream versions; sources come
# from the Go module proxy.
#
# Idempotent and cached: a binary is keyed by its upstream version and a hash
# of its module files, Go version and build flags, and stored in
#   ${DISTILLCTL_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/distillctl/cluster}/<name>-<version>-<key>
# (shared by every clone of the repository for this user), then linked as
# .cluster/bin/<name>-<version>. .cluster/bin/manifest.json tells the Python
# side (tests/cluster) where each binary and each upstream module (CRDs,
# webhook manifests) is.
#
# Usage: hack/cluster/build.sh [component...]   (default: all)
# Env:   CLUSTER_ETCD=system  use an `etcd` from PATH (e.g. Debian's etcd-server)
#                             instead of building etcd.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HACK="$ROOT/hack/cluster"
BIN="$ROOT/.cluster/bin"
CACHE="${DISTILLCTL_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/distillctl/cluster}"
GO="${GO:-go}"

# name|module dir|package to build|upstream module (gives the version)
# Components that can share dependency versions share a module, so that the
# Go build cache compiles k8s.io/api, client-go, ... once for all of them:
#   k8s/    k8s.io/kubernetes (staging modules pinned to v0.35.x), Kueue, etcd
#   jobset/ the JobSet controller (Kueue needs the newer jobset API module, so apart)
#   tools/  kwok and helm (client libraries v0.37)
#   gcs/    fake-gcs-server, a Cloud Storage emulator for gs:// outputs (Google client libraries)
COMPONENTS=(
  "kube|k8s|./kube|k8s.io/kubernetes"
  "kueue|k8s|sigs.k8s.io/kueue/cmd/kueue|sigs.k8s.io/kueue"
  "etcd|k8s|go.etcd.io/etcd/server/v3|go.etcd.io/etcd/server/v3"
  "jobset|jobset|sigs.k8s.io/jobset|sigs.k8s.io/jobset"
  "kwok|tools|sigs.k8s.io/kwok/cmd/kwok|sigs.k8s.io/kwok"
  "helm|tools|helm.sh/helm/v3/cmd/helm|helm.sh/helm/v3"
  "fake-gcs-server|gcs|github.com/fsouza/fake-gcs-server|github.com/fsouza/fake-gcs-server"
)

if ! command -v "$GO" >/dev/null 2>&1; then
  echo "build.sh: Go is needed (https://go.dev/dl/); not found as '$GO'" >&2
  exit 1
fi

ldflags_for() {  # name version
  local name=$1 v=$2 minor
  case "$name" in
    kube)
      minor="${v#v1.}"; minor="${minor%%.*}"
      echo "-X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitTreeState=clean" ;;
    jobset) echo "-X sigs.k8s.io/jobset/pkg/version.GitVersion=$v" ;;
    kueue)  echo "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$v" ;;
    helm)   echo "-X helm.sh/helm/v3/internal/version.version=$v" ;;
    *)      echo "" ;;
  esac
}

want=("$@")
selected() {
  [ ${#want[@]} -eq 0 ] && return 0
  local w; for w in "${want[@]}"; do [ "$w" = "$1" ] && return 0; done
  return 1
}

mkdir -p "$BIN" "$CACHE"
# The Go build cache of these builds (~5 GB for all of them) lives beside the binaries only while this run builds,
# and is deleted when it ends: it would only speed up a rebuild after a version bump, and a CI run once failed for
# want of disk space. One folder per run, so that a run ending never deletes what another is building with; the
# user's own GOCACHE is left alone.
GO_BUILD_CACHE="$CACHE/go-build.$$"
trap '[ ! -d "$GO_BUILD_CACHE" ] || { chmod -R u+w "$GO_BUILD_CACHE" && rm -rf "$GO_BUILD_CACHE"; }' EXIT
manifest_entries=()
goversion="$("$GO" env GOVERSION) $("$GO" env GOOS)/$("$GO" env GOARCH)"

for spec in "${COMPONENTS[@]}"; do
  IFS='|' read -r name dir pkg mod <<<"$spec"
  moddir="$HACK/$dir"
  # Resolve (and download if needed) the upstream module: version + source dir.
  info="$(cd "$moddir" && "$GO" mod download -json "$mod")"
  version="$(sed -n 's/^[[:space:]]*"Version": "\(.*\)",*$/\1/p' <<<"$info" | head -1)"
  srcdir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p' <<<"$info" | head -1)"
  if [ -z "$version" ] || [ -z "$srcdir" ]; then
    echo "build.sh: cannot resolve $mod for $name:" >&2; echo "$info" >&2; exit 1
  fi
  binary=""
  if [ "$name" = etcd ] && [ "${CLUSTER_ETCD:-}" = system ]; then
    binary="$(command -v etcd || true)"
    [ -n "$binary" ] || { echo "build.sh: CLUSTER_ETCD=system but no etcd in PATH" >&2; exit 1; }
    version="$("$binary" --version 2>/dev/null | sed -n 's/^etcd Version: /v/p' | head -1) (system)"
    echo "etcd: using $binary ($version)"
  elif selected "$name"; then
    ldflags="-s -w $(ldflags_for "$name" "$version")"
    key="$( { echo "$goversion"; echo "$ldflags"; cat "$moddir"/go.mod "$moddir"/go.sum; \
              find "$moddir" -name '*.go' -type f | LC_ALL=C sort | xargs -r cat; } \
            | sha256sum | cut -c1-12)"
    binary="$CACHE/$name-$version-$key"
    if [ -x "$binary" ]; then
      echo "$name $version: cached ($binary)"
    else
      echo "$name $version: building $pkg (first build of a component takes minutes) ..."
      start=$(date +%s)
      tmp="$binary.tmp.$$"
      (cd "$moddir" && GOCACHE="$GO_BUILD_CACHE" CGO_ENABLED=0 "$GO" build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$tmp" "$pkg")
      mv -f "$tmp" "$binary"
      echo "$name $version: built in $(( $(date +%s) - start ))s"
    fi
    ln -sfn "$binary" "$BIN/$name-$version"
    binary="$BIN/$name-$version"
  else
    # Not asked for now: keep a previous build, if any.
    [ -e "$BIN/$name-$version" ] && binary="$BIN/$name-$version"
  fi
  manifest_entries+=("$(printf '  "%s": {"version": "%s", "binary": "%s", "module": "%s", "source": "%s"}' \
    "$name" "$version" "$binary" "$mod" "$srcdir")")
done

{
  echo "{"
  for i in "${!manifest_entries[@]}"; do
    sep=","; [ "$i" -eq $(( ${#manifest_entries[@]} - 1 )) ] && sep=""
    echo "${manifest_entries[$i]}$sep"
  done
  echo "}"
} >"$BIN/manifest.json.tmp"
mv -f "$BIN/manifest.json.tmp" "$BIN/manifest.json"
echo "wrote $BIN/manifest.json"
