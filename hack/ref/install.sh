#!/usr/bin/env bash
# The test-only reference environment: PyTorch (CPU use) + Hugging Face transformers in their own venv ($1).
# PyPI's torch is a CUDA build whose full dependency set is ~2.9 GB; with --no-deps plus only the NVIDIA runtime
# wheels its shared library links against, it imports and runs on CPU (~1.8 GB). The versions of those wheels are
# the ones torch's own metadata pins. Idempotent: pip skips what is installed.
#
# Cached: every wheel is first downloaded (`pip download`) into a per-user folder shared by all clones,
#   ${DISTILLCTL_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/distillctl/wheels/ref}
# and installed from there alone (`pip install --no-index`), because pip's own HTTP cache may stay empty (e.g. behind
# a registry proxy whose responses are not cacheable) and the wheels are ~2 GB. Each download is first tried from the
# cache alone, so once it holds everything no step touches the network. PIP_FIND_LINKS, if set, is still searched.
# A corrupt wheel in the cache (e.g. a copy cut off by a crash) is not detected: delete the folder to start over.
set -euo pipefail
VENV=${1:?usage: install.sh VENV TORCH_VERSION TRANSFORMERS_VERSION}
TORCH=${2:?}
TRANSFORMERS=${3:?}
PYTHON=${PYTHON:-python3}
WHEELS=${DISTILLCTL_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/distillctl/wheels/ref}
mkdir -p "$WHEELS"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
fetch() {  # pip download args...: from the cache alone if it has them all, else from the index into the cache
  "$PY" -m pip download -q --no-index --find-links "$WHEELS" -d "$WHEELS" "$@" >/dev/null 2>&1 ||
    "$PY" -m pip download -q --find-links "$WHEELS" -d "$WHEELS" "$@"
}
install() {  # pip install args...: from the cache (and PIP_FIND_LINKS) only
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$@"
}
fetch pip
install --upgrade pip
fetch --no-deps "torch==$TORCH"
install --no-deps "torch==$TORCH"
# torch's runtime needs: the small pure-Python ones, and the NVIDIA libraries libtorch_cuda.so links against.
mapfile -t REQS < <("$PY" - <<'PY'
import importlib.metadata as md
import re
keep = ("cuda-runtime", "cuda-cupti", "cuda-nvrtc", "cublas", "cufft", "cufile", "cusparse", "cusparselt", "nccl",
        "cudnn", "nvshmem")
pure = ("filelock", "typing-extensions", "typing_extensions", "sympy", "networkx", "jinja2", "fsspec", "setuptools")
for req in md.requires("torch") or []:
    spec = req.split(";")[0].strip()
    marker = req.split(";")[1] if ";" in req else ""
    if "extra ==" in marker:
        continue
    name = re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0].lower()
    if name.startswith("nvidia-") and any(name.removeprefix("nvidia-").startswith(k) for k in keep):
        print(spec)
    elif name == "cuda-toolkit":  # newer torch: one meta-package whose extras are the NVIDIA wheels
        extras = re.search(r"\[(.*?)\]", spec).group(1).split(",")
        wanted = [e for e in extras if e in ("cublas", "cudart", "cufft", "cufile", "cupti", "cusparse", "nvrtc",
                                              "nvjitlink")]
        print(f"cuda-toolkit[{','.join(wanted)}]" + spec[spec.index("]") + 1:])
    elif name in pure:
        print(spec)
PY
)
# cuda-toolkit's extras pull in their wheels; everything else comes without its own dependencies.
mapfile -t PLAIN < <(printf '%s\n' "${REQS[@]}" | grep -v '^cuda-toolkit')
fetch --no-deps "${PLAIN[@]}"
install --no-deps "${PLAIN[@]}"
TOOLKIT=$(printf '%s\n' "${REQS[@]}" | grep '^cuda-toolkit' || true)
if [ -n "$TOOLKIT" ]; then
  fetch "$TOOLKIT"
  install "$TOOLKIT"
fi
LAST=("mpmath<1.4" markupsafe "transformers==$TRANSFORMERS")
fetch "${LAST[@]}"
install "${LAST[@]}"
# Of the NVIDIA wheels, the loader needs only the libraries torch's own link against (ldd follows their rpaths);
# cuDNN's engines, cuFFT/cuBLAS's companions and the headers are loaded, if ever, only on a GPU. Deleting the rest
# saves ~1.2 GB on every clone (a CI run once failed for want of disk space here). ldd is glibc's, always present.
SITE=$(realpath "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')")
if [ -d "$SITE/nvidia" ]; then
  mapfile -t LINKED < <(for lib in "$SITE"/torch/lib/*.so* "$SITE"/torch/_C*.so; do ldd "$lib"; done |
    grep -o '/[^ ]*/nvidia/[^ ]*' | xargs -r -n1 realpath | sort -u)
  [ "${#LINKED[@]}" -gt 0 ] || { echo "install.sh: ldd found none of torch's NVIDIA libraries" >&2; exit 1; }
  find "$SITE/nvidia" -type f ! -name '__init__.py' -print0 |
    { grep -zvxF -f <(printf '%s\n' "${LINKED[@]}") || true; } | xargs -0 -r rm -f
fi
"$PY" -c "import torch, transformers; torch.zeros(2) @ torch.ones(2); print('reference env:', torch.__version__, transformers.__version__)"
