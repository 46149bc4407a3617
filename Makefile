# The front door: make run, make test, make lint.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format clean bench fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python scripts/run_stack.py

test: $(STAMP)
	$(BIN)/pytest

# The HTTP contract under schemathesis for 10 minutes, fresh seed (make test runs 20 s, seeded).
fuzz: $(STAMP)
	PROMPTBATCH_FUZZ_SECONDS=600 PROMPTBATCH_FUZZ_SEED= $(BIN)/pytest -s tests/fuzz

# Service and direct abatch script side by side (several minutes): BENCHMARKS.md and its plot.
bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
