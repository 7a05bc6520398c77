# rethink — the two commands a new user needs:  `make demo`  and  `make test`.
# Both call `make setup`, which builds .venv once and reuses it while pyproject.toml is unchanged.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo clean-venv gpu-wheels

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

# Wheels for benchmarks/gpu_check.sh on a GPU machine without a package index (its own Python and torch).
GPU_PYTHON_VERSION ?= 3.12
gpu-wheels: setup
	$(PY) -m pip wheel -q --no-deps -w .gpu-wheels fvcore iopath   # pure-Python sdists: built here, any Python
	$(PY) -m pip download -q --python-version $(GPU_PYTHON_VERSION) --only-binary=:all: \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
	  -d .gpu-wheels pycocotools submitit hotcoco faster-coco-eval pyyaml tqdm yacs tabulate termcolor portalocker
	@du -sh .gpu-wheels
