#!/usr/bin/env bash
# Build the trainer image (trainer/Dockerfile) with podman: `make image` and tests/test_image.py call this.
#   hack/image/build.sh [TAG]        TAG defaults to distillctl-trainer:dev (stored as localhost/TAG)
# BASE=IMAGE picks the base (e.g. python:3.11-slim where a registry is reachable); by default the base is
# Debian bookworm's python3 made by mmdebstrap from Debian's packages, cached as a tarball under
# ~/.cache/distillctl/base and imported once into the project's podman storage (hack/image/podman.sh).
# pip runs inside the build with the host's CA bundle mounted read-only and a per-user pip cache mounted in;
# neither is part of any layer.
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG="${1:-distillctl-trainer:dev}"
CACHE="${DISTILLCTL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/distillctl}"
P=hack/image/podman.sh
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates,passwd
# Bump BASE_REV to remake the cached base (e.g. for Debian's security updates).
BASE_REV=1
BASE_TAG="localhost/distillctl-base:$SUITE-py3-$BASE_REV"

if [ -z "${BASE:-}" ]; then
  BASE="$BASE_TAG"
  if ! $P image exists "$BASE"; then
    tarball="$CACHE/base/$SUITE-py3-$BASE_REV.tar"
    if [ ! -s "$tarball" ]; then
      mkdir -p "$CACHE/base" "$CACHE/debs"
      echo "making the base image with mmdebstrap ($SUITE: $PACKAGES) → $tarball"
      # Downloaded .debs are kept in $CACHE/debs; docs and manuals are left out; dpkg skips fsync (a throwaway
      # chroot); apt's lists and caches are removed from the tarball.
      mmdebstrap --variant=minbase --include="$PACKAGES" \
        --dpkgopt=force-unsafe-io \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --skip=download/empty --skip=essential/unlink \
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
        --setup-hook="sync-in $CACHE/debs /var/cache/apt/archives/" \
        --customize-hook="sync-out /var/cache/apt/archives $CACHE/debs" \
        --format=tar "$SUITE" "$tarball.tmp"
      mv "$tarball.tmp" "$tarball"
    fi
    echo "importing $tarball as $BASE"
    $P import --change 'CMD ["/usr/bin/python3"]' "$tarball" "$BASE" >/dev/null
  fi
fi

ca="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
mounts=(--volume "$CACHE/pip:/var/cache/distillctl-pip" --build-arg PIP_CACHE=/var/cache/distillctl-pip)
[ -r "$ca" ] && mounts+=(--volume "$ca:/run/distillctl-ca.crt:ro" --build-arg CA_BUNDLE=/run/distillctl-ca.crt)
mkdir -p "$CACHE/pip"
# --timestamp 0: created times and file times fixed, so the same inputs give the same layers.
$P build --file trainer/Dockerfile --tag "$TAG" --build-arg BASE="$BASE" --timestamp 0 "${mounts[@]}" .
$P image inspect --format '{{.Id}}' "$TAG"
