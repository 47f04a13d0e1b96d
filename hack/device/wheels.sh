#!/usr/bin/env bash
# Wheels a lent GPU machine lacks for the trainer's step, into .whl/ (git-ignored), for bench/device.sh.
#
# The machine's image has Python 3.12 with CUDA JAX, Flax, Optax, Orbax, tensorstore, NumPy, PyYAML and more, and
# reaches no package index (/work/.library/device/KINDS.md); pydantic, grain and their few needs travel as wheels.
# Flax and Optax travel too, at the versions the trainer is locked to, so that only JAX is the image's. Versions come
# from trainer/requirements.lock. Idempotent: pip skips wheels already in .whl/. ~8 MB in all (the working tree
# that travels is limited to 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/../.."
NAMES="grain array-record portpicker pydantic pydantic-core annotated-types typing-inspection typing-extensions flax optax"
pins=()
for name in $NAMES; do
  pin=$(grep -i -E "^${name//-/[-_.]}==" trainer/requirements.lock | cut -d' ' -f1)
  [ -n "$pin" ] || { echo "error: $name is not in trainer/requirements.lock" >&2; exit 1; }
  pins+=("$pin")
done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
ls .whl
