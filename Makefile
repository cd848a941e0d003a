# make setup     create .venv: the package (editable, with the `betavae` command) and its pinned requirements
# make repro     setup, then `dvc repro` and the README's results table: on a fresh clone this only
#                downloads MNIST, as the reference run's outputs are committed
# make retrain   setup, then train from scratch (whatever training state is lying around), evaluate,
#                plot, and compare the metrics with the committed run
# make test      setup, lint, then the fast tier: every test that runs in this process (a few minutes)
# make test-all  setup, lint, then every test, with the DVC, git and torchrun end-to-end runs (CI's),
#                a pytest-xdist worker per core
# make lint      ruff on the code, actionlint on the GitHub workflow
# make bench     setup, then the training-speed benchmark (benchmarks/train_speed.py)
# make dvc-yaml  rewrite dvc.yaml's code and params lists from the package (scripts/dvc_yaml.py)
# make gpu-check on a machine with a CUDA GPU: train → export timed, the benchmark, the cuda tests (scripts/gpu_check.py)

VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/installed
# Stages call `python`, `dvc` and `torchrun`; the venv's must come first.
export PATH := $(BIN):$(PATH)

.PHONY: setup repro retrain test test-all lint bench dvc-yaml gpu-check

setup: $(STAMP)

# Rebuilt only when what it is built from changes.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@echo "setup: installing the package and requirements.txt into $(VENV)"
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

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
	python -m pytest -m "not slow"

test-all: lint
	python -m pytest -n auto --dist worksteal

bench: setup
	python benchmarks/train_speed.py

dvc-yaml: setup
	python scripts/dvc_yaml.py

gpu-check: setup
	python scripts/gpu_check.py
