# Self-documenting Makefile: `make help` lists the targets.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-all study tables figures report lint clean

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

# Every pruner of the config group conf/pruner/ (= the registry, tests/test_pruner_registry.py).
PRUNERS := $(shell ls conf/pruner/*.yaml | sed 's|.*/||; s|\.yaml$$||' | paste -sd, -)
# The committed shapes study on val and on test, two one-thread jobs at a time: every pruner x 3
# keeps, the unpruned model included, which ignores keep and runs once per split in none/keep1.0
# (its three sweep jobs share that directory: one runs, the others wait on its lock, then only
# score; keep is the outer loop so those three jobs are a whole pruner list apart and rarely wait).
# Eight images per model call: the predictions are batch 1's (tests/test_predict_batch.py), the
# records' stage times are then per-image shares of a batch, not one image's latency.
STUDY_JOBS := hydra/launcher=joblib hydra.launcher.n_jobs=2 batch_size=8
STUDY_GRID := model=glamm_shapes keep=0.1,0.25,0.5 pruner=$(PRUNERS) $(STUDY_JOBS)
# PDrop rows beyond the grid. Upstream's lambda 0.5 on val and test (layers=null gives [2, 4, 6] on the
# 8-layer model, upstream's [8, 16, 24] scaled): with lambda set, keep does not change the schedule,
# so it runs once, at keep 0.1 (its directory name says keep0.1; it keeps 288/144/72 tokens).
STUDY_PDROP_UPSTREAM := model=glamm_shapes data=shapes_val,shapes_test pruner=pdrop keep=0.1 \
	pruner.lambda_=0.5 $(STUDY_JOBS)
# The score x renumber ablation on val: one stage at layer 2 keeping FastV's floor(keep*576) (lambda
# solved to keep/1); score=previous renumber=false is FastV itself.
STUDY_PDROP_ABLATION := model=glamm_shapes data=shapes_val pruner=pdrop keep=0.1,0.5 'pruner.layers=[2]' \
	pruner.score=own,previous pruner.renumber=true,false $(STUDY_JOBS)
# ALTP and DDC at the LLM input (Algorithm 1 read literally), ranked within regions by CLIP's CLS attention.
STUDY_INPUT_LEVEL := model=glamm_shapes data=shapes_val,shapes_test keep=0.1,0.25,0.5 pruner=altp,ddc \
	pruner.layer=0 pruner.importance=cls $(STUDY_JOBS)
study: $(STAMP) ## Rerun the shapes study (val, then test, then the PDrop and LLM-input rows), publish it to results/shapes, rebuild tables
	$(PY) run.py -m data=shapes_val $(STUDY_GRID)
	$(PY) run.py -m data=shapes_test $(STUDY_GRID)
	$(PY) run.py -m $(STUDY_PDROP_UPSTREAM)
	$(PY) run.py -m $(STUDY_PDROP_ABLATION)
	$(PY) run.py -m $(STUDY_INPUT_LEVEL)
	$(PY) scripts/publish_study.py --runs runs/glamm_shapes --out results/shapes/glamm_shapes
	$(MAKE) tables

tables: $(STAMP) ## Rebuild the paper-shaped tables from run records under results/
	$(PY) scripts/make_tables.py --results results --out results/tables

# The README's token panel: three pruners of the CI slice on one val image (kept by publish_study).
SLICE := results/shapes/ci_slice/glamm_shapes/shapes_val
figures: $(STAMP) ## Draw the study figures (and the README's token panel) from run records into results/figures
	$(PY) -m altp.viz figures results --out results/figures
	$(PY) -m altp.viz tokens $(SLICE)/altp/keep0.1 $(SLICE)/fastv/keep0.1 $(SLICE)/pdrop/keep0.25 \
		--image sa_24802756 --dpi 80 --out results/figures/tokens_glamm_shapes_shapes_val_sa_24802756.png

report: $(STAMP) ## Build the shapes study's static HTML report into results/report/index.html
	$(PY) -m altp.report results/shapes --out results/report

# The type checker's settings are [tool.basedpyright] in pyproject.toml (altp, baselines, eval).
lint: $(STAMP) ## Lint with ruff, type-check with basedpyright
	$(VENV)/bin/ruff check altp baselines eval scripts tests run.py
	$(VENV)/bin/basedpyright

clean: ## Remove caches (keeps .venv)
	rm -rf .pytest_cache .ruff_cache .hypothesis
