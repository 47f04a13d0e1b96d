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
	$(PY) -m pip install -q -e '.[train,dev,tunix]'
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: install
	$(VENV)/bin/distillctl validate sweeps/tiny.yaml sweeps/llama3.1-8b-pruning-recovery.yaml
	$(VENV)/bin/distillctl explain sweeps/tiny.yaml

test: install
	$(PY) -m pytest
