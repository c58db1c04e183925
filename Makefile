# signal-worker. The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SERVICES := scripts/services.sh
# Exact versions with hashes (`make lock` refreshes them from pyproject.toml): the runtime
# dependencies (what the image installs), the development set, and the build backend.
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
BUILD_LOCK := requirements-build.lock
LOCK_FLAGS := --quiet --generate-hashes --universal --python-version 3.11 \
        --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
CONTAINERS := scripts/container-engine.sh
IMAGE ?= signal-worker:local
CHART := deploy/helm/signal-worker

.PHONY: help venv services services-down migrate seed-demo run test test-unit test-integration \
        lint fmt bench up down clean lock image test-containers helm-lint

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

$(STAMP): pyproject.toml $(DEV_LOCK) $(BUILD_LOCK)
	@test -x $(PY) || { echo "[make] creating the virtual environment in $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "[make] installing signal-worker and its development tools"
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check --require-hashes -r $(DEV_LOCK) -r $(BUILD_LOCK)
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP) ## create the virtual environment and install everything

services: ## start local Kafka and PostgreSQL unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL point elsewhere
	@$(SERVICES) up

services-down: ## stop the services that `make services` started (by recorded process id)
	@$(SERVICES) down

migrate: venv services ## apply pending schema files
	@$(PY) -m worker migrate

seed-demo: migrate ## create the demo user and agents (safe to run twice)
	@$(PY) -m worker seed-demo

run: migrate ## set everything up and run the worker in the foreground (Ctrl-C stops it)
	@$(PY) -m worker seed-demo --if-empty
	@exec $(PY) -m worker run

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

bench: venv services ## the benchmark: throughput, latency, limits; writes docs/benchmarks.md
	@$(PY) -m benchmarks

lock: venv ## refresh the lock files from pyproject.toml (UPGRADE=1: newest versions allowed)
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_FLAGS) -o $(LOCK)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -c $(LOCK) -o $(DEV_LOCK)
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	    | $(VENV)/bin/uv pip compile - $(LOCK_FLAGS) -c $(DEV_LOCK) -o $(BUILD_LOCK)

image: ## build the image (IMAGE=signal-worker:local) with Docker, else podman
	@$(CONTAINERS) build $(IMAGE)

test-containers: venv services ## the image end to end, the wheel, compose and the Helm chart
	@$(PY) -m pytest -m containers tests/containers

helm-lint: ## helm lint --strict and helm template of the chart, with each ci/ values file
	@helm=$$($(CONTAINERS) helm) && for values in $(CHART)/ci/*-values.yaml; do \
	    $$helm lint --strict $(CHART) --values $$values \
	    && $$helm template signal-worker $(CHART) --values $$values --kube-version 1.30.0 >/dev/null \
	    || exit 1; done

up: ## docker compose: Kafka, PostgreSQL, migrate, the worker, Prometheus, Grafana
	@scripts/compose-env.sh
	docker compose up -d --build

down: ## docker compose down
	docker compose down

clean: ## stop services and remove the virtual environment and local service data
	scripts/services.sh purge
	rm -rf $(VENV) .services .pytest_cache .mypy_cache .ruff_cache
