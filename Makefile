# The two commands the README opens with. Each one sets itself up on a fresh machine.
#   make demo   synthetic world + a small sweep on the embedded default (SQLite, CPU)
#   make test   lint + format check + the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
DEMO_WORLD ?= data/synthetic
DEMO_STUDY ?= loss_weights
DEMO_TRIALS ?= 3

.PHONY: demo test lint format setup world bench clean browser

setup: $(STAMP)

# torch first, pinned: the CPU wheel lies on disk; a plain "torch" would pull several GB of CUDA.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  echo "CUDA found: installing torch from pyproject's range"; \
	else \
	  $(PY) -m pip install -q torch==2.13.0; \
	fi
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

world: $(STAMP)
	@if [ ! -f $(DEMO_WORLD)/v1.0-mini/scene.json ]; then \
	  mkdir -p $(dir $(DEMO_WORLD)); \
	  $(VENV)/bin/cmcr synth --out $(DEMO_WORLD) --preset demo --overwrite; \
	else echo "synthetic world present: $(DEMO_WORLD)"; fi

demo: world
	$(PY) sweeps/run.py --study $(DEMO_STUDY) --preset demo --n-trials $(DEMO_TRIALS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache  # the floors of docs/architecture.md (pyproject.toml)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# the dashboard test renders the report in headless Chromium (Debian package, installed once)
browser:
	@bash dashboards/ensure_chromium.sh

# two workers (xdist); shared services stay in one group each (tests/conftest.py); the 15
# slowest tests are printed, and the run fails past tests/budget.json
TEST_WORKERS ?= 2
test: lint browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

bench: $(STAMP)
	$(PY) -m cmcr.bench

clean:
	rm -rf runs reports .pytest_cache
