# Self-documenting Makefile: `make help` lists the targets.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-all tables lint clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv/ and install the project into it

demo: $(STAMP) ## Run the demo study on the embedded default and print its table
	$(PY) scripts/demo.py

# One thread per process: the tiny test models are dominated by per-op threading
# overhead, which multi-threading only adds to on a 2-core machine.
test: $(STAMP) ## Run the test suite (slow tests skipped)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow"

test-all: $(STAMP) ## Run every test, slow ones included
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

tables: $(STAMP) ## Rebuild the paper-shaped tables from run records under results/
	$(PY) scripts/make_tables.py --results results --out results/tables

lint: $(STAMP) ## Lint with ruff
	$(VENV)/bin/ruff check altp baselines eval scripts tests run.py

clean: ## Remove caches (keeps .venv)
	rm -rf .pytest_cache .ruff_cache .hypothesis
