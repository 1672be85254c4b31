# The two set-up commands of README.md: `make run` (the main job) and `make test` (lint, the docs
# site's strict build, then the tests).
# Both create .venv, install torch==2.13.0 first (the CPU build), then onebit with its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.onebit-installed

.PHONY: run test lint docs format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Larq Compute Engine's interpreter for tests/test_lce_export.py, in a venv of its own: LCE's
# interpreter module is built against numpy 1 (about 20 s; without it those tests skip and say so).
LCE_VENV := .venv-lce
$(LCE_VENV)/.installed:
	$(PYTHON) -m venv $(LCE_VENV)
	$(LCE_VENV)/bin/python -m pip install --quiet 'numpy<2' larq-compute-engine==0.16.0 || echo "larq-compute-engine not installed: LCE's checks will skip"
	touch $@

run: $(STAMP)
	$(BIN)/onebit train

test: lint docs $(LCE_VENV)/.installed
	$(BIN)/python -m pytest

# the documentation site (mkdocs + Material + mkdocstrings), built offline into site/; any warning fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bop_step.py

clean:
	rm -rf $(VENV) $(LCE_VENV) site
