# signal-worker. The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.run-stamp
DEV_STAMP := $(VENV)/.dev-stamp
SERVICES := scripts/services.sh
PIP := $(PY) -m pip --disable-pip-version-check
MUTATION_JOBS ?= 2
# Exact versions with hashes (`make lock` refreshes them from pyproject.toml): the runtime
# dependencies (what the image and `make run` install), the development set, and the build
# backend.
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
BUILD_LOCK := requirements-build.lock
LOCK_FLAGS := --quiet --generate-hashes --universal --python-version 3.11 \
        --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
CONTAINERS := scripts/container-engine.sh
IMAGE ?= signal-worker:local
CHART := deploy/helm/signal-worker

# The local services' ports (scripts/services.sh); the worker's commands point at them unless
# DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS name services of your own.
LOCAL_PG_PORT ?= 5432
LOCAL_KAFKA_PORT ?= 9092
export LOCAL_PG_PORT LOCAL_KAFKA_PORT
WORKER := DATABASE_URL="$${DATABASE_URL:-postgresql://postgres@127.0.0.1:$(LOCAL_PG_PORT)/signals}" \
	KAFKA_BOOTSTRAP_SERVERS="$${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$(LOCAL_KAFKA_PORT)}" \
	$(PY) -m worker

.PHONY: help venv run-venv services services-down migrate seed-demo run demo test test-unit \
        test-integration lint fmt bench mutation up down clean lock image run-image \
        test-containers helm-lint

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

# What running needs (the worker and its locked dependencies); the dev tools come with `venv`.
$(RUN_STAMP): pyproject.toml $(LOCK) $(BUILD_LOCK)
	@test -x $(PY) || { echo "[make] creating the virtual environment in $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "[make] installing signal-worker and what it needs to run ($(LOCK))"
	@set -o pipefail; $(PIP) install --progress-bar off --upgrade pip | { grep -v "^Requirement already" || true; }
	@set -o pipefail; $(PIP) install --progress-bar off --require-hashes -r $(LOCK) -r $(BUILD_LOCK) \
		| { grep -v "^Requirement already" || true; }
	@set -o pipefail; $(PIP) install --progress-bar off --no-deps --no-build-isolation -e . \
		| { grep -v "^Requirement already" || true; }
	@touch $(RUN_STAMP)

$(DEV_STAMP): $(RUN_STAMP) pyproject.toml $(DEV_LOCK)
	@echo "[make] installing the development tools: tests, linters, benchmark ($(DEV_LOCK))"
	@set -o pipefail; $(PIP) install --progress-bar off --require-hashes -r $(DEV_LOCK) \
		| { grep -v "^Requirement already" || true; }
	@touch $(DEV_STAMP)

run-venv: $(RUN_STAMP) ## the virtual environment with what running needs

venv: $(DEV_STAMP) ## the virtual environment with the development tools too

services: ## start local Kafka and PostgreSQL (never touches services it did not start)
	@$(SERVICES) up

services-down: ## stop the services that `make services` started (by recorded process id)
	@$(SERVICES) down

migrate: run-venv services ## apply pending schema files
	@$(WORKER) migrate

seed-demo: migrate ## create the demo user and agents (safe to run twice)
	@$(WORKER) seed-demo

run: migrate ## set everything up and run the worker in the foreground (Ctrl-C stops it)
	@$(WORKER) seed-demo --if-empty
	@trap 'echo "[make] the worker stopped; Kafka and PostgreSQL still run: make services-down stops them"' EXIT; \
	$(WORKER) run

demo: migrate ## a signal and a price path through the demo agents, with the worker of `make run` (or its own)
	@$(WORKER) demo

test: venv services ## the whole suite: unit, integration, end-to-end, faults, benchmark smoke
	@$(PY) -m pytest

test-unit: venv ## the quick loop: pure domain tests, no services
	@$(PY) -m pytest tests/unit -q

test-integration: venv services ## integration and end-to-end tests only
	@$(PY) -m pytest tests/integration tests/e2e

lint: venv ## ruff, mypy (strict) and import-linter
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy
	@$(VENV)/bin/lint-imports

fmt: venv ## format and autofix
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .

mutation: venv ## mutation testing of worker/domain (minutes, not in `make test`): score per file
	@rm -rf mutants
	@start=$$SECONDS; $(PY) -m tools.mutmut_run run --max-children $(MUTATION_JOBS) \
		&& echo "[make] mutmut ran in $$((SECONDS - start)) s"
	@$(PY) -m tools.mutation_report

bench: venv services ## the benchmark: throughput, latency, limits; writes docs/benchmarks.md
	@$(PY) -m benchmarks

lock: venv ## refresh the lock files from pyproject.toml (UPGRADE=1: newest versions allowed)
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_FLAGS) -o $(LOCK)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -c $(LOCK) -o $(DEV_LOCK)
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	    | $(VENV)/bin/uv pip compile - $(LOCK_FLAGS) -c $(DEV_LOCK) -o $(BUILD_LOCK)

image: ## build the image (IMAGE=signal-worker:local) with Docker, else podman
	@$(CONTAINERS) build $(IMAGE)

run-image: services image ## `make run` in the image: migrate, then the worker (host network, the engine `make image` chose)
	@DATABASE_URL="$${DATABASE_URL:-postgresql://postgres@127.0.0.1:$(LOCAL_PG_PORT)/signals}" \
	KAFKA_BOOTSTRAP_SERVERS="$${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$(LOCAL_KAFKA_PORT)}" \
	$(CONTAINERS) run $(IMAGE)

test-containers: venv services ## the image end to end, the wheel, compose and the Helm chart
	@$(PY) -m pytest -m containers tests/containers

helm-lint: ## helm lint --strict and helm template of the chart, with each ci/ values file
	@helm=$$($(CONTAINERS) helm) && for values in $(CHART)/ci/*-values.yaml; do \
	    $$helm lint --strict $(CHART) --values $$values \
	    && $$helm template signal-worker $(CHART) --values $$values >/dev/null \
	    || exit 1; done

# Compose needs the compose plugin (or docker-compose) and a Docker engine: scripts/compose.sh
# says in one line which is missing, before anything is written.
up: ## docker compose: Kafka, PostgreSQL, migrate, the worker, Prometheus, Grafana
	@scripts/compose.sh check
	@scripts/compose-env.sh
	@scripts/compose.sh up -d --build

down: ## docker compose down
	@scripts/compose.sh down

clean: ## stop services and remove the virtual environment and local service data
	scripts/services.sh purge
	rm -rf $(VENV) .services .pytest_cache .mypy_cache .ruff_cache
