#!/usr/bin/env bash
# The test-only reference environment: PyTorch (CPU use) + Hugging Face transformers in their own venv ($1).
# PyPI's torch is a CUDA build whose full dependency set is ~2.9 GB; with --no-deps plus only the NVIDIA runtime
# wheels its shared library links against, it imports and runs on CPU (~1.8 GB). The versions of those wheels are
# the ones torch's own metadata pins. Idempotent: pip skips what is installed.
set -euo pipefail
VENV=${1:?usage: install.sh VENV TORCH_VERSION TRANSFORMERS_VERSION}
TORCH=${2:?}
TRANSFORMERS=${3:?}
PYTHON=${PYTHON:-python3}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q --no-deps "torch==$TORCH"
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
"$PY" -m pip install -q --no-deps $(printf '%s\n' "${REQS[@]}" | grep -v '^cuda-toolkit')
TOOLKIT=$(printf '%s\n' "${REQS[@]}" | grep '^cuda-toolkit' || true)
if [ -n "$TOOLKIT" ]; then "$PY" -m pip install -q "$TOOLKIT"; fi
"$PY" -m pip install -q "mpmath<1.4" markupsafe "transformers==$TRANSFORMERS"
"$PY" -c "import torch, transformers; torch.zeros(2) @ torch.ones(2); print('reference env:', torch.__version__, transformers.__version__)"
