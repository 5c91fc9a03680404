# Two entry points on a fresh machine (see README):
#   make run   - create .venv if missing (CPU torch pinned), then `dvc repro` the default pipeline
#   make test  - create .venv if missing, then ruff check, ruff format --check, pytest
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
REQS   ?= requirements-dev.txt

.PHONY: run test lint env sweep compare clean-outputs cluster-age-sweep cluster-age-cases cluster-age-compare

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

# cluster_age: the paper's experiments as DVC experiments (README "cluster_age experiments").
DVC = PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc
AB  = PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/astrobatch
CA_SEEDS ?= 0,1,2
CA_RADII ?= 2,4,6,8,12,16,24,32,40

cluster-age-sweep: env   # test MdAE vs R for inner and outer masks, 5im
	$(DVC) exp run --queue -S 'cluster_age.mask.type=inner,outer' \
	  -S 'cluster_age.mask.radius=$(CA_RADII)' -S 'cluster_age.seed=$(CA_SEEDS)'
	$(DVC) exp run --run-all --jobs 1
	$(MAKE) cluster-age-compare

cluster-age-cases: env   # single cases: no mask / inner / outer (R = 6), 1im vs 5im, control
	$(DVC) exp run --queue -S 'cluster_age.mask.type=none' -S 'cluster_age.mask.radius=0' \
	  -S 'cluster_age.model.input=1im,5im' -S 'cluster_age.seed=$(CA_SEEDS)'
	$(DVC) exp run --queue -S 'cluster_age.mask.type=inner,outer' -S 'cluster_age.mask.radius=6' \
	  -S 'cluster_age.model.input=1im,5im' -S 'cluster_age.seed=$(CA_SEEDS)'
	$(DVC) exp run --queue -S 'cluster_age.training.shuffle_targets=true' \
	  -S 'cluster_age.seed=$(CA_SEEDS)'
	$(DVC) exp run --run-all --jobs 1
	$(MAKE) cluster-age-compare

cluster-age-compare: env
	mkdir -p reports
	$(DVC) exp show --json > reports/exp_show.json
	$(AB) compare --exp-json reports/exp_show.json --experiments-only --out reports/compare \
	  --metric test/mdae_log_age --param cluster_age.mask.radius --hue cluster_age.mask.type \
	  --where cluster_age.model.input=5im --where cluster_age.training.shuffle_targets=false \
	  -b baseline/mean/test/mdae_log_age -b baseline/photometric/test/mdae_log_age \
	  --name cluster_age_mdae_vs_radius || true
	$(AB) compare --exp-json reports/exp_show.json --experiments-only --out reports/compare \
	  --metric test/mdae_log_age \
	  --param cluster_age.mask.type+cluster_age.training.shuffle_targets \
	  --hue cluster_age.model.input \
	  -b baseline/mean/test/mdae_log_age -b baseline/photometric/test/mdae_log_age \
	  --name cluster_age_cases
