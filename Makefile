# make setup   create .venv from requirements.txt (again only when requirements.txt changed)
# make repro   setup, then run the whole DVC pipeline and refresh the README's results table
# make test    setup, then the test suite
# make bench   setup, then the training-speed benchmark (issue: benchmarks/train_speed.py)

VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/requirements.installed
# Stages call `python` and `dvc`; the venv's must come first.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test bench

setup:
	@if ! cmp -s requirements.txt $(INSTALLED) 2>/dev/null; then \
		echo "setup: installing requirements.txt into $(VENV)"; \
		test -x $(PYTHON) || python3 -m venv $(VENV) || exit 1; \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt || exit 1; \
		cp requirements.txt $(INSTALLED); \
	fi

repro: setup
	dvc repro
	$(PYTHON) scripts/readme_results.py --metrics reports/metrics.json --readme README.md

test: setup
	$(PYTHON) -m pytest -q tests

bench: setup
	$(PYTHON) benchmarks/train_speed.py
