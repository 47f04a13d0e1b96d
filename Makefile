# All set-up happens here, idempotently: `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

XPK_VERSION := 1.16.0
XPK_VENV := .venv-xpk

.PHONY: install xpk demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[train,dev,tunix]'
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

demo: install
	$(VENV)/bin/distillctl validate sweeps/tiny.yaml sweeps/llama3.1-8b-pruning-recovery.yaml
	$(VENV)/bin/distillctl explain sweeps/tiny.yaml

test: install xpk
	$(PY) -m pytest
