# Quick start: `make setup` (virtualenv + every dependency, torch pinned by constraints.txt),
# `make test` (pytest suite), then `dvc repro` inside the virtualenv (or `make repro`).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export TORCH_DEVICE_BACKEND_AUTOLOAD ?= 0
export DVC_NO_ANALYTICS ?= 1

.PHONY: setup setup-postgres test lint repro clean

setup:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade -c constraints.txt "pip>=24"
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	$(BIN)/python -c "import torch, transformers, faiss, k_means_constrained, mlflow, optuna, peft, accelerate; print('torch', torch.__version__)"

# PostgreSQL's server programs (Debian package), for the test that shares a study between two
# working copies through a real server; without them that test is skipped.
setup-postgres:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update && \
	    $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y postgresql; }

test:
	$(BIN)/python -m pytest --durations=15

lint:
	$(BIN)/ruff check sidrec_core bench tests && $(BIN)/ruff format --check sidrec_core bench tests

repro:
	PATH=$(abspath $(BIN)):$$PATH dvc repro

# Stage outputs that are not tracked by git; metrics/ is committed (git checkout metrics restores
# it after a local run) and the shipped data/datasets stay.
clean:
	rm -rf data/prepared data/embeddings.npy data/sids data/predictions models
