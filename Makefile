# Two entry points on a fresh machine (see README):
#   make run   - create .venv if missing (CPU torch pinned), then `dvc repro` the default pipeline
#   make test  - create .venv if missing, then ruff check, ruff format --check, pytest
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
REQS   ?= requirements-dev.txt

.PHONY: run test lint env sweep sweep-compare clean-outputs container-test

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

# Build the image from the Dockerfile on a CPU base (debootstrap + podman, no registry) and run
# a study's stages in it (containers/build-cpu.sh, tests/test_container_image.py; root, ~6 min).
container-test: env
	PATH="$(CURDIR)/$(BIN):$$PATH" ASTROBATCH_CONTAINER_TEST=1 $(BIN)/python -m pytest -q -s \
		tests/test_container_image.py tests/test_containers.py

# Sweeps of DVC experiments, defined by name in sweeps.yaml (`astrobatch sweep list`):
#   make sweep NAME=star_sets_models [JOBS=1]   queue the grids, run them, then compare
#   make sweep-compare NAME=cluster_age_cases   only redo the comparison tables and figures
NAME ?=
JOBS ?= 1
AB    = PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/astrobatch

sweep: env
	@test -n "$(NAME)" || { echo "usage: make sweep NAME=<sweep>; the sweeps:"; $(AB) sweep list; exit 2; }
	$(AB) sweep run $(NAME) --jobs $(JOBS)

sweep-compare: env
	@test -n "$(NAME)" || { echo "usage: make sweep-compare NAME=<sweep>; the sweeps:"; $(AB) sweep list; exit 2; }
	$(AB) sweep compare $(NAME)
