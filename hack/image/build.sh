#!/usr/bin/env bash
# Build an image with podman: the trainer's (trainer/Dockerfile: `make image`) or the controller's
# (orchestrator/Dockerfile: `make image-controller`); tests/test_image.py calls this.
#   hack/image/build.sh [TAG [PART]]   PART: trainer (default) or orchestrator; TAG defaults to
#                                      distillctl-trainer:dev, or distillctl:dev for the orchestrator (localhost/TAG)
# BASE=IMAGE picks the base (e.g. python:3.11-slim where a registry is reachable); by default the base is
# Debian bookworm's python3 made by mmdebstrap from Debian's packages, cached as a tarball under
# ~/.cache/distillctl/base and imported once into the project's podman storage (hack/image/podman.sh).
# The locked wheels are downloaded on the host (with its CA bundle) into ~/.cache/distillctl/wheels/image and
# mounted read-only into the build, which runs without a network; they are not part of any layer.
set -euo pipefail
cd "$(dirname "$0")/../.."
PART="${2:-trainer}"
case "$PART" in
  trainer) TAG="${1:-distillctl-trainer:dev}" ;;
  orchestrator) TAG="${1:-distillctl:dev}" ;;
  *) echo "unknown part $PART: trainer or orchestrator" >&2; exit 2 ;;
esac
LOCK="$PART/requirements.lock"
CACHE="${DISTILLCTL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/distillctl}"
# One build at a time per user: the test workers build both images at once, and each would make the base, import
# it and fill the wheel folder beside the other.
mkdir -p "$CACHE"
exec 9>"$CACHE/image-build.lock"
flock 9
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

# Every wheel of the lock for CPython 3.11 on x86-64 Linux, checked against the lock's hashes, with the host's
# pip (.venv's, else python3's: --python-version picks the wheels) and CA bundle.
wheels="$CACHE/wheels/image"  # one folder for both locks: a wheel they share is downloaded once
mkdir -p "$wheels"
platforms=()  # pip matches --platform tags exactly: every manylinux tag a 2.31 glibc runs
for t in manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_12 \
  manylinux2010 manylinux_2_5 manylinux1 linux; do platforms+=(--platform "${t}_x86_64"); done
stamp="$wheels/.complete-$(sha256sum "$LOCK" | cut -c1-16)"
if [ ! -e "$stamp" ]; then  # pip re-asks the index for every package even when all are here: skip it when done
  py=python3
  [ -x .venv/bin/python ] && py=.venv/bin/python
  "$py" -m pip download --quiet --no-deps --require-hashes --only-binary :all: --dest "$wheels" \
    "${platforms[@]}" --python-version 3.11 --implementation cp --abi cp311 -r "$LOCK"
  touch "$stamp"
fi
mounts=(--network none --volume "$wheels:/run/distillctl-wheels:ro" --build-arg WHEELS=/run/distillctl-wheels)
# --timestamp 0: created times and file times fixed, so the same inputs give the same layers.
$P build --file "$PART/Dockerfile" --tag "$TAG" --build-arg BASE="$BASE" --timestamp 0 "${mounts[@]}" .
$P image inspect --format '{{.Id}}' "$TAG"
