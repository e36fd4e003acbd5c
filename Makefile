# aidist: `make demo` runs the main job, `make test` runs the tests. Both set everything up:
# the venv with pinned dependencies (torch==2.13.0 CPU first, so no CUDA build is pulled), the
# services that are down, and the database migrations.

VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: venv services tools db demo test test-unit test-integration test-e2e faults lint bench clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

services:
	bash scripts/services.sh

# Debian packages the tests run as tools (docker-compose, prometheus, chromium), where missing.
tools:
	bash scripts/tools.sh

db: venv services
	$(BIN)/aidist db upgrade

demo: db
	$(BIN)/aidist demo

test: tools db
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: tools db
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: tools db
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

# The fault suite alone (also part of `make test`): kills workers, restarts RabbitMQ, PostgreSQL
# and Redis (needs root, as on the CI machine), prints a tally line per scenario.
faults: db
	$(BIN)/python -m pytest tests/faults $(PYTEST_ARGS)

# Benchmarks: every scenario with its baselines in one run (~20 min on 2 cores), a table on stdout,
# JSON + PNG in bench/out/<timestamp>/. Smoke run: make bench BENCH_ARGS=--quick (see bench/README.md).
bench: db
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# ruff, mypy --strict, and the import contracts of pyproject.toml (layers, AMQP only in
# aidist.transport, a light client).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
