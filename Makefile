# Two commands for users: `make demo` and `make test`. Both create or refresh .venv first.
SHELL := /bin/bash
PYTHON312 ?= $(shell for p in python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do \
  if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; assert sys.version_info[:2]==(3,12)' 2>/dev/null; then echo $$p; break; fi; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEPS := pyproject.toml setup.py constraints.txt requirements-nodeps.txt

.PHONY: venv demo compare test lint test-dist test-slurm clean

$(STAMP): $(DEPS)
	@if [ -z "$(PYTHON312)" ]; then echo "error: Python 3.12 not found (megatron-core 0.19 needs it); set PYTHON312=/path/to/python3.12" >&2; exit 1; fi
	@if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; assert sys.version_info[:2]==(3,12)' 2>/dev/null; then rm -rf $(VENV); $(PYTHON312) -m venv $(VENV); fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	@touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/pivotrl run experiment=quickstart

# PivotRL against SFT, end-to-end RL and the ablations from one pi_0 (under an hour on 2 cores).
compare: venv
	$(VENV)/bin/pivotrl compare experiment=compare

# Lint, format and type checks first: seconds, and CI enforces them through this target.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

test-slurm: venv
	OMP_NUM_THREADS=2 $(PY) -m pytest -q tests/slurm

test-dist: venv
	OMP_NUM_THREADS=2 $(PY) -m pytest -q tests/dist

clean:
	rm -rf $(VENV) runs
