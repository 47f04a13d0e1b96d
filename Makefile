# All set-up happens here, idempotently: `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := train,dev,tunix,gcs
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; echo '$(EXTRAS)') | sha256sum | cut -c1-12)

XPK_VERSION := 1.16.0
XPK_VENV := .venv-xpk

# Test-only reference models: PyTorch (CPU use) + Hugging Face transformers, in their own venv (never imported
# by trainer/ or orchestrator/). See hack/ref/install.sh for why torch comes without most of its CUDA wheels.
REF_TORCH := 2.15.0
REF_TRANSFORMERS := 5.12.1
REF_VENV := .venv-ref
REF_STAMP := $(REF_VENV)/.ref-$(REF_TORCH)-$(REF_TRANSFORMERS)

.PHONY: install xpk ref demo test clean image image-controller image-tools image-lock

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# XPK, as a test reference only: --no-deps into .venv (its system_characteristics module), and with its own
# pinned dependencies into $(XPK_VENV) (its `workload create --dry-run` manifest). Idempotent.
xpk: install $(VENV)/.xpk-$(XPK_VERSION) $(XPK_VENV)/.xpk-$(XPK_VERSION)

$(VENV)/.xpk-$(XPK_VERSION): $(STAMP)
	$(PY) -m pip install -q --no-deps 'xpk==$(XPK_VERSION)'
	@rm -f $(VENV)/.xpk-*
	@touch $@

$(XPK_VENV)/.xpk-$(XPK_VERSION):
	@test -x $(XPK_VENV)/bin/python || $(PYTHON) -m venv $(XPK_VENV)
	$(XPK_VENV)/bin/python -m pip install -q 'xpk==$(XPK_VERSION)'
	@rm -f $(XPK_VENV)/.xpk-*
	@touch $@

ref: $(REF_STAMP)

$(REF_STAMP): hack/ref/install.sh
	PYTHON=$(PYTHON) hack/ref/install.sh $(REF_VENV) $(REF_TORCH) $(REF_TRANSFORMERS)
	@rm -f $(REF_VENV)/.ref-*
	@touch $@

# The main job on the local, embedded default: the quickstart sweep (teacher pre-training, four distilled
# students and a labels-only baseline) as background trainer processes, followed to the end, then the table.
demo: install
	$(VENV)/bin/distillctl validate sweeps/tiny-teacher.yaml sweeps/tiny.yaml sweeps/maxtext-distillation.yml
	$(VENV)/bin/distillctl sweep sweeps/quickstart.yaml --wait
	$(VENV)/bin/distillctl results sweeps/quickstart.yaml --plot out/quickstart

# One worker per core; tests/conftest.py keeps each file, and everything on the control plane, on one worker.
test: install xpk ref cluster-build tools image-tools
	$(PY) -m pytest -n auto --dist loadfile

# actionlint (tests/test_workflows.py), built from the Go module proxy into ~/.cache/distillctl/tools (per version).
.PHONY: tools
tools:
	@hack/tools/actionlint.sh >/dev/null

# --- Local Kubernetes control plane for the tests (tests/cluster, hack/cluster) ---
# cluster-build compiles the components from the Go module proxy (cached; see
# hack/cluster/build.sh). CLUSTER_ETCD=system uses an etcd from PATH instead of
# building one, installing Debian's etcd-server if there is none.
.PHONY: cluster-build cluster-up cluster-down

cluster-build:
	@if [ "$(CLUSTER_ETCD)" = system ] && ! command -v etcd >/dev/null 2>&1; then \
	  echo "no etcd found: installing Debian's etcd-server"; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q etcd-server; \
	fi
	CLUSTER_ETCD=$(CLUSTER_ETCD) hack/cluster/build.sh

cluster-up: install cluster-build
	$(PY) -m tests.cluster up

cluster-down:
	@if [ -x $(PY) ]; then $(PY) -m tests.cluster down; else python3 -m tests.cluster down; fi

# --- The trainer image (trainer/Dockerfile) and the controller's (orchestrator/Dockerfile, the chart's image);
# tests/test_image.py builds and runs both, tests/test_service_cluster.py serves a sweep from the controller's ---
# image-tools installs Debian's container tools where any is missing (podman runs with runc and the settings in
# hack/image/podman.sh). image builds localhost/$(IMAGE) on a Debian base made by mmdebstrap; BASE=python:3.11-slim
# (or any image podman can pull) uses that base instead; image-controller builds localhost/$(CONTROLLER_IMAGE).
# image-lock re-pins trainer/requirements.lock and orchestrator/requirements.lock from their .in files, with
# hashes, for CPython 3.11 on x86-64 Linux (uv in a per-user tool venv).
IMAGE ?= distillctl-trainer:dev
CONTROLLER_IMAGE ?= distillctl:dev
IMAGE_TOOLS := podman buildah skopeo runc mmdebstrap docker-registry
UV := $(HOME)/.cache/distillctl/tools/uv/bin/uv

image-tools:
	@missing="$$(for t in $(IMAGE_TOOLS); do command -v $$t >/dev/null 2>&1 || echo $$t; done)"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian's container tools (missing: $$(echo $$missing))"; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $(IMAGE_TOOLS); \
	fi

image: image-tools
	BASE=$(BASE) hack/image/build.sh $(IMAGE)

image-controller: image-tools
	BASE=$(BASE) hack/image/build.sh $(CONTROLLER_IMAGE) orchestrator

image-lock: $(UV)
	for part in trainer orchestrator; do \
	  $(UV) pip compile $$part/requirements.in --python-version 3.11 --python-platform x86_64-manylinux_2_31 \
	    --generate-hashes --annotation-style line --upgrade -o $$part/requirements.lock || exit 1; \
	done

$(UV):
	$(PYTHON) -m venv $(HOME)/.cache/distillctl/tools/uv
	$(HOME)/.cache/distillctl/tools/uv/bin/pip install -q uv
