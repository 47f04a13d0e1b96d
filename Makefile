# All set-up happens here, idempotently: `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[train,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: install
	$(VENV)/bin/distillctl validate sweeps/tiny.yaml sweeps/llama3.1-8b-pruning-recovery.yaml
	$(VENV)/bin/distillctl explain sweeps/tiny.yaml

test: install cluster-build
	$(PY) -m pytest

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
