# The front door: make run, make test, make lint. One venv; each target installs what it needs
# (make run the service alone, make test and make lint the dev tools, make bench the plotting).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
DEV := $(VENV)/.dev
BENCH := $(VENV)/.bench

.PHONY: install run test lint format clean bench fuzz

$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[anthropic,google_genai,ollama]'
	touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(DEV)

$(BENCH): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $(BENCH)

# The service and the promptbatch command, nothing else.
install: $(RUNTIME)

run: $(RUNTIME)
	$(BIN)/python scripts/run_stack.py

# The tests include a smoke run of make bench (its table and plot): both extras.
test: $(DEV) $(BENCH)
	$(BIN)/pytest

# The HTTP contract under schemathesis for 10 minutes, fresh seed (make test runs 20 s, seeded).
fuzz: $(DEV)
	PROMPTBATCH_FUZZ_SECONDS=600 PROMPTBATCH_FUZZ_SEED= $(BIN)/pytest -s tests/fuzz

# Service and direct abatch script side by side (several minutes): BENCHMARKS.md and its plot.
bench: $(BENCH)
	$(BIN)/python -m bench

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(DEV)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
