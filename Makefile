# Two entry points for a newcomer: `make demo` and `make test`. Both create (or reuse) .venv.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rankax-installed
WORKDIR ?= runs/digits

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## Train and evaluate the default config (scikit-learn digits) on the CPU.
demo: $(STAMP)
	$(PY) -m experiments.train --config configs/digits.py --workdir $(WORKDIR)

## Lint, then the whole test suite (notebooks included).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadgroup -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m experiments.benchmark

clean:
	rm -rf $(VENV) runs
