# Two entry points on a fresh machine (see README):
#   make run   - create .venv if missing (CPU torch pinned), then `dvc repro` the default pipeline
#   make test  - create .venv if missing, then ruff check, ruff format --check, pytest
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
REQS   ?= requirements-dev.txt

.PHONY: run test lint env sweep compare clean-outputs

$(BIN)/astrobatch: requirements.txt requirements-cpu.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(REQS)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

env: $(BIN)/astrobatch

run: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

# The 3 models x 3 seeds sweep of the README, then the comparison table and figure.
sweep: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc exp run --queue \
	  -S 'star_sets.model.name=summary_stats,deep_sets,set_transformer' -S 'star_sets.seed=1,2,3'
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc exp run --run-all --jobs 1
	$(MAKE) compare

compare: env
	mkdir -p reports
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc exp show --json > reports/exp_show.json
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/astrobatch compare --exp-json reports/exp_show.json \
	  --metric test/mae_log_mass --param star_sets.model.name \
	  --baseline baseline/median/test/mae_log_mass --experiments-only --out reports/compare
