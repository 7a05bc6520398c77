# rethink — the two commands a new user needs:  `make demo`  and  `make test`.
# Both call `make setup`, which builds .venv once and reuses it while pyproject.toml is unchanged.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@set -e; \
	if [ ! -x $(PY) ]; then echo "[setup] creating $(VENV)"; $(PYTHON) -m venv $(VENV); fi; \
	$(PY) -m pip install -q --upgrade "pip>=23" ; \
	echo "[setup] installing rethink and its dependencies into $(VENV) (first time: a few minutes)"; \
	$(PY) -m pip install -q -e ".[test]"; \
	rm -f $(VENV)/.installed-*; touch $@; echo "[setup] done"

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not slurm" $(PYTEST_ARGS)

demo: setup
	$(PY) tools/demo.py

clean-venv:
	rm -rf $(VENV)
