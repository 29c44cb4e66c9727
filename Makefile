# Switchyard — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
TARGET ?= all
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast bench bench-audit clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP) ## create .venv and install the project with its test tools

run: $(STAMP) ## run everything embedded: nats-server + all services, API on 127.0.0.1:8080
	$(PY) -m services --target $(TARGET) --embedded-nats

test: $(STAMP) ## run the whole test suite (starts its own nats-server)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) ## the suite without the process-killing fault tests
	$(PY) -m pytest -q -m "not fault" $(PYTEST_ARGS)

bench: $(STAMP) ## benchmark against the bare upstream and LiteLLM; prints a table, writes bench/results/
	$(PY) -m bench

bench-audit: $(STAMP) ## what audit costs the request path at concurrency 1 (paired runs, ~7 min)
	$(PY) -m bench.attribution

clean: ## remove the virtualenv and local state
	rm -rf $(VENV) .data .pytest_cache
