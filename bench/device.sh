#!/usr/bin/env bash
# Issue 13's accelerator check, prepared to run in one call of the device tool (15 minutes of device time a
# session, a machine's start included): the trainer's step for a ~1B teacher → smaller student on the lent GPU,
# with the fused loss (the trainer's choice at this size) and the dense one, each compiled and timed.
#
#   hack/device/wheels.sh                                    # here, once: the wheels the image lacks, into .whl/
#   run(command="bash bench/device.sh", carry=[".whl"], timeout_s=540)
#
# What comes back under $OUT: gpu.txt (nvidia-smi), bench.log, bench.json (bench/bench_accelerator.py's figures).
# Record the figures in bench/README.md with the device named. ~1 minute to start the machine, ~1 to draw the
# weights, ~1–2 to compile each loss, seconds to time them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
ls .whl/*.whl >/dev/null 2>&1 || { echo "error: no wheels in .whl/: run hack/device/wheels.sh here and carry .whl" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# The step and the dense loss's logits want most of the card: JAX takes 75 % by default.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export DISTILLCTL_COMPILE_CACHE=off
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
# The carried Flax and Optax are the trainer's locked versions; should they not import beside the image's JAX, the
# image's own are tried before giving up (minutes of device time are too few to come back with nothing).
check='import jax, flax, optax, trainer.setup; print("jax", jax.__version__, "flax", flax.__version__, jax.devices())'
if ! python3 -c "$check" 2>&1 | tee -a "$OUT/gpu.txt"; then
  echo "the carried Flax/Optax do not import beside this JAX: trying the image's" | tee -a "$OUT/gpu.txt"
  rm -rf /tmp/site/flax /tmp/site/flax-* /tmp/site/optax /tmp/site/optax-*
  python3 -c "$check" 2>&1 | tee -a "$OUT/gpu.txt" || { echo "the trainer does not import here" >&2; exit 1; }
fi
timeout "${BENCH_TIMEOUT:-420}" python3 bench/bench_accelerator.py --size "${BENCH_SIZE:-1b}" \
  --loss "${BENCH_LOSSES:-auto,dense}" --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
echo "bench exit ${PIPESTATUS[0]}; figures in $OUT"
