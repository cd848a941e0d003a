# make setup     create .venv: the package (editable, with the `betavae` command) and its pinned requirements,
#                a line per phase (scripts/setup_env.py); PYTHON=python3.12 picks the interpreter, which
#                must be one that pyproject.toml's requires-python allows
# make repro     setup, then `dvc repro` and the README's results table: on a fresh clone this only
#                downloads MNIST, as the reference run's outputs are committed
# make retrain   setup, then train from scratch (whatever training state is lying around), evaluate,
#                plot, and compare the metrics with the committed run
# make test      setup, lint, then the fast tier: every test that runs in this process (a few minutes)
# make test-all  setup, lint, then every test, with the DVC, git and torchrun end-to-end runs (CI's),
#                a pytest-xdist worker per core
# make lint      ruff on the code, actionlint on the GitHub workflow
# make bench     setup, then the training-speed benchmark (benchmarks/train_speed.py)
# make dvc-yaml  rewrite dvc.yaml's code and params lists from the package (python -m scripts.dvc_yaml)
# make gpu-check on a machine with a CUDA GPU: train → export timed, the benchmark, the cuda tests (scripts/gpu_check.py)
# make smoke     params.yaml made smoke-sized, so that every README command runs in seconds (scripts/workspace.py)
# make reference the reference run's params, lock and outputs back from HEAD, after experiments or make smoke

VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# The interpreter that makes .venv (once .venv exists, its own is used).
PYTHON ?= python3
# Stages call `python`, `dvc` and `torchrun`; the venv's must come first.
export PATH := $(BIN):$(PATH)

.PHONY: setup repro retrain test test-all lint bench dvc-yaml gpu-check

# Checks the interpreter, then installs phase by phase; only when the contents of requirements*.txt or
# pyproject.toml changed since the last complete setup (else one line says .venv is up to date).
setup:
	@$(PYTHON) scripts/setup_env.py --venv $(VENV)

repro: setup
	dvc repro
	python scripts/readme_results.py

retrain: setup
	dvc repro check_params download
	BETAVAE_RESUME=never dvc repro --force --single-item train
	dvc repro
	dvc metrics diff --all HEAD

lint: setup
	ruff check .
	actionlint .github/workflows/ci.yml

test: lint
	python -m pytest -m "not slow" -n auto --dist worksteal

test-all: lint
	python -m pytest -n auto --dist worksteal

bench: setup
	python benchmarks/train_speed.py

dvc-yaml: setup
	python -m scripts.dvc_yaml

gpu-check: setup
	python scripts/gpu_check.py

.PHONY: smoke reference
smoke: setup
	python -m scripts.workspace smoke

reference: setup
	python -m scripts.workspace reference
