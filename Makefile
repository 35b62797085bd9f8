# The two set-up commands of the README: `make run` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install system-deps js-deps lint typecheck unit bench bench-kafka clean

$(BIN)/frustration: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/frustration

## The product's main job on the embedded default (no broker).
run: install
	$(BIN)/frustration serve --demo

## Debian packages and Kafka jars the integration tests use (idempotent; skipped when present).
system-deps:
	bash deploy/install-system-deps.sh

## posthog-js for the browser test, at the version of its lockfile (not committed: node_modules).
JS_TEST_DIR := tests/e2e/posthog_js
js-deps: $(JS_TEST_DIR)/node_modules/.package-lock.json

$(JS_TEST_DIR)/node_modules/.package-lock.json: $(JS_TEST_DIR)/package.json $(JS_TEST_DIR)/package-lock.json
	cd $(JS_TEST_DIR) && npm ci --no-audit --no-fund --ignore-scripts

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

## Everything: lint, format check, types, and the whole test suite against real Kafka,
## real Prometheus, real SQLite and headless Chromium.
test: install system-deps js-deps lint typecheck
	$(BIN)/pytest

unit: install
	$(BIN)/pytest tests/unit detectors signals

bench: install
	$(BIN)/python benchmarks/replay_throughput.py

## Kafka runner throughput and produce-to-flag latency (starts its own broker; ~5 minutes).
bench-kafka: install system-deps
	$(BIN)/python benchmarks/kafka_throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
